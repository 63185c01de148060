"""A throwaway, real Kubernetes control plane for l3lb's tests: etcd, kube-apiserver, kube-controller-manager.

The binaries are built from the Go module proxy once per version (``setup/build-control-plane.sh``) and
cached outside the work tree. Each start is fresh: loopback only, free ports, a new data dir, self-signed
certificates, RBAC on, an admin identity, and ``identity()`` to mint more (client certificates: CN = user,
O = groups). The same code serves pytest fixtures and the shell::

    python tests/support/testenv.py up --dir DIR          # prints DIR/admin.kubeconfig
    python tests/support/testenv.py identity --dir DIR --user NAME --group GROUP
    python tests/support/testenv.py down --dir DIR
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too: tests/nixpkgs_lib.py
import nixpkgs_lib

HERE = Path(__file__).resolve().parent
STATE_FILE = "testenv.json"
CONTROLLERS = (
    "endpointslice-controller,endpointslice-mirroring-controller,garbage-collector-controller,"
    "namespace-controller,serviceaccount-controller"
)
SERVICE_CIDRS = "10.96.0.0/16,fd00:96::/112"
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def versions() -> dict[str, str]:
    """The pinned versions from tests/versions.env."""
    out = {}
    for line in (HERE.parent / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


# nixpkgs' own lib/, found as tests/nixpkgs_lib.py says (here: ../shared/nixpkgs-lib beside the repository).
try:
    NIXPKGS_LIB = nixpkgs_lib.find()
    NIXPKGS_LIB_MISSING = ""
except nixpkgs_lib.NotFound as _err:
    NIXPKGS_LIB = Path("/nonexistent/nixpkgs-lib/lib")
    NIXPKGS_LIB_MISSING = str(_err)


def cache_dir() -> Path:
    return Path(os.environ.get("L3LB_TESTENV_CACHE", Path.home() / ".cache" / "l3lb-testenv"))


def binaries() -> dict[str, Path]:
    """Paths of the cached binaries, building them first if any is missing."""
    v = versions()
    cache = cache_dir()
    paths = {
        "etcd": cache / f"etcd-{v['ETCD_VERSION']}" / "etcd",
        "kube-apiserver": cache / f"kube-{v['KUBE_VERSION']}" / "kube-apiserver",
        "kube-controller-manager": cache / f"kube-{v['KUBE_VERSION']}" / "kube-controller-manager",
        "kubectl": cache / f"kube-{v['KUBE_VERSION']}" / "kubectl",
    }
    if not all(p.exists() for p in paths.values()):
        build = HERE.parents[1] / "setup" / "build-control-plane.sh"
        subprocess.run(["bash", str(build)], check=True, stdout=subprocess.DEVNULL)
    return paths


def interrupt_on_sigterm() -> None:
    """Makes SIGTERM raise KeyboardInterrupt, so ``with``/``finally`` clean-up runs as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(pki: Path, name: str, subject: str, extfile: str | None = None) -> None:
    """A key and a certificate signed by the test CA: ``pki/name.key``, ``pki/name.crt``."""
    _openssl("req", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki)
    ext = ["-extfile", extfile] if extfile else []
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        *ext,
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def _die_with_parent() -> None:
    """Runs in a child before exec: SIGTERM it when the process that started it dies (even by SIGKILL)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], log: Path, *, detach: bool, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts a process in its own process group, its output in ``log``.

    Attached processes die with their parent; detached ones (``testenv.py up``) outlive it and are stopped
    by ``down`` from the PIDs in the state file.
    """
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=None if detach else _die_with_parent,
            env=env,
        )


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def stop_pid(pid: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    """SIGTERM the process group of ``pid``, then SIGKILL after ``timeout``; reaps it if it is our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not pid_alive(pid):
                return
            time.sleep(0.05)


@dataclass
class State:
    """What ``up`` started, saved so that ``down`` (another process) can stop it."""

    dir: str
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"


class ControlPlane:
    """One throwaway control plane rooted at ``dir``. Use as a context manager or with start()/stop()."""

    def __init__(
        self, dir: str | os.PathLike[str], *, detach: bool = False, audit: tuple[str, ...] = ()
    ) -> None:
        self.dir = Path(dir).resolve()
        self.detach = detach
        self.audit = audit
        """Users whose requests go to an audit log (``audit.log``, one JSON line each), so benchmarks can
        count them; nobody else's are audited, so that auditing costs the measured writes nothing."""
        self.procs: dict[str, subprocess.Popen] = {}
        self.state: State | None = None

    # ---- paths
    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        assert self.state is not None
        return self.state.server

    # ---- lifecycle
    def start(self) -> ControlPlane:
        bins = binaries()
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / STATE_FILE).exists():
            raise RuntimeError(f"{self.dir} already holds a running control plane; run down first")
        self.logs.mkdir(exist_ok=True)
        self._make_pki()
        self.state = State(str(self.dir), free_port(), free_port(), free_port())
        self.identity("admin", ["system:masters"], self.admin_kubeconfig)
        self.identity("kube-controller-manager", ["system:masters"], self.dir / "kcm.kubeconfig")
        try:
            self._start_etcd(bins["etcd"])
            self.start_apiserver(bins["kube-apiserver"])
            self.start_controller_manager(bins["kube-controller-manager"])
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, name: str, argv: list[str]) -> None:
        assert self.state is not None
        proc = spawn(argv, self.logs / f"{name}.log", detach=self.detach)
        self.procs[name] = proc
        self.state.pids[name] = proc.pid
        self._save()

    def _start_etcd(self, etcd: Path) -> None:
        assert self.state is not None
        peer = f"http://127.0.0.1:{self.state.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.state.etcd_port}"
        data = self.dir / "etcd-data"
        self._start(
            "etcd",
            [
                str(etcd),
                "--name=testenv",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testenv={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: self._http_ok(f"{client}/health"), "etcd", 30)

    def start_controller_manager(self, binary: Path | None = None) -> None:
        self._start(
            "kube-controller-manager",
            [
                str(binary or binaries()["kube-controller-manager"]),
                f"--kubeconfig={self.dir / 'kcm.kubeconfig'}",
                f"--controllers={CONTROLLERS}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--secure-port=0",
                "--concurrent-service-endpoint-syncs=10",
            ],
        )

    def restart_apiserver(self) -> None:
        """Starts the apiserver again after ``stop_apiserver()``, on the same port and data.

        kube-controller-manager is restarted with it: its client-go informers would otherwise sit in
        their reconnect backoff (up to 30 s) and make EndpointSlice updates late in tests.
        """
        self._stop_one("kube-controller-manager")
        self.start_apiserver()
        self.start_controller_manager()

    def start_apiserver(self, binary: Path | None = None) -> None:
        """Starts the apiserver and waits until it is ready."""
        assert self.state is not None
        pki = self.pki
        self._start(
            "kube-apiserver",
            [
                str(binary or binaries()["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{self.state.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.state.apiserver_port}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDRS}",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                *self._audit_flags(),
            ],
        )
        self._wait(self._apiserver_ready, "kube-apiserver", 90)

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.dir / "audit-policy.json"
        policy.write_text(
            json.dumps(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [{"level": "Metadata", "users": list(self.audit)}, {"level": "None"}],
                }
            )
        )
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}"]

    def stop_apiserver(self) -> None:
        self._stop_one("kube-apiserver")

    def stop_etcd(self) -> None:
        """Stops etcd alone: the apiserver stays up and fails what needs storage."""
        self._stop_one("etcd")

    def start_etcd(self) -> None:
        """Starts etcd again on its data, after ``stop_etcd()``."""
        self._start_etcd(binaries()["etcd"])

    def _stop_one(self, name: str) -> None:
        assert self.state is not None
        pid = self.state.pids.pop(name, None)
        if pid is not None:
            stop_pid(pid, self.procs.pop(name, None))
            self._save()

    def stop(self) -> None:
        """Stops everything this control plane started and removes the etcd data and the state file."""
        if self.state is None:
            return
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop_one(name)
        for name in list(self.state.pids):
            self._stop_one(name)
        subprocess.run(["rm", "-rf", str(self.dir / "etcd-data")], check=False)
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        self.state = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def attach(cls, dir: str | os.PathLike[str]) -> ControlPlane:
        """The control plane that ``up`` started in ``dir``, for ``identity`` and ``down``."""
        cp = cls(dir, detach=True)
        path = cp.dir / STATE_FILE
        if not path.exists():
            raise RuntimeError(f"no control plane is running in {cp.dir}")
        cp.state = State(**json.loads(path.read_text()))
        return cp

    def _save(self) -> None:
        assert self.state is not None
        (self.dir / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))

    # ---- readiness
    @staticmethod
    def _wait(check, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def _admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return ctx

    def _apiserver_ready(self) -> bool:
        proc = self.procs.get("kube-apiserver")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited; see {self.logs / 'kube-apiserver.log'}")
        return self._http_ok(f"{self.server}/readyz", self._admin_ssl())

    # ---- certificates and identities
    def _make_pki(self) -> None:
        pki = self.pki
        pki.mkdir(exist_ok=True)
        _openssl(
            "req",
            "-x509",
            *EC_KEY,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=l3lb-testenv-ca",
            cwd=pki,
        )
        (pki / "server.ext").write_text("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n")
        _issue(pki, "server", "/CN=kube-apiserver", "server.ext")
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)

    def identity(
        self,
        user: str,
        groups: list[str] | tuple[str, ...] = (),
        path: Path | None = None,
        *,
        embed: bool = True,
    ) -> Path:
        """Mints a client certificate for ``user`` in ``groups`` and writes a kubeconfig for it.

        ``embed=False`` makes the kubeconfig point to the certificate files by path, as k3s agent
        kubeconfigs do.
        """
        assert self.state is not None
        pki = self.pki
        _issue(pki, user, "".join(f"/O={g}" for g in groups) + f"/CN={user}")
        path = path or self.dir / f"{user}.kubeconfig"
        path.write_text(
            kubeconfig(
                self.server, pki / "ca.crt", pki / f"{user}.crt", pki / f"{user}.key", user, embed=embed
            )
        )
        return path


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str, *, embed: bool = True) -> str:
    """A kubeconfig (JSON is valid YAML) for one client-certificate identity."""
    if embed:

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        cluster = {"server": server, "certificate-authority-data": b64(ca)}
        creds = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    else:
        cluster = {"server": server, "certificate-authority": str(ca)}
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testenv", "cluster": cluster}],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": user}}],
            "current-context": "testenv",
        },
        indent=2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testenv.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a control plane in the background; prints the admin kubeconfig")
    up.add_argument("--dir", required=True)
    ident = sub.add_parser("identity", help="mint a kubeconfig for USER in GROUPs; prints its path")
    ident.add_argument("--dir", required=True)
    ident.add_argument("--user", required=True)
    ident.add_argument("--group", action="append", default=[])
    ident.add_argument("--cert-files", action="store_true", help="point to certificate files by path")
    down = sub.add_parser("down", help="stop what up started")
    down.add_argument("--dir", required=True)
    sub.add_parser("build", help="build the binaries if missing; prints the cache dir")
    args = parser.parse_args(argv)

    if args.cmd == "build":
        binaries()
        print(cache_dir())
    elif args.cmd == "up":
        cp = ControlPlane(args.dir, detach=True).start()
        print(cp.admin_kubeconfig)
    elif args.cmd == "identity":
        cp = ControlPlane.attach(args.dir)
        print(cp.identity(args.user, args.group, embed=not args.cert_files))
    elif args.cmd == "down":
        ControlPlane.attach(args.dir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
