"""How the agent starts as a systemd service (nixos/service.nix): READY=1 once it holds what it adopted,
without waiting for the API, and a kubeconfig that is not complete yet read again instead of failing the
start. The real ``l3lb run`` in a network namespace, systemd's notify socket played by the test."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agents import agent_argv
from lab import REPO, nix_eval
from netns import ApiRelay, NetNS, ip
from testenv import ControlPlane

from l3lb.k8s.api import EX_TEMPFAIL

pytestmark = pytest.mark.root

PREFIX = "10.0.251.0/24"
ADOPTED = "10.0.251.7"
UNREACHABLE = """apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: "nothing-listens-there"}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's side of the notify protocol: a datagram socket and its path for NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()


def received(sock: socket.socket, want: str, timeout: float) -> list[str]:
    """Notify messages until one holds ``want`` (all of them, in order); AssertionError on timeout."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if want in seen[-1]:
            return seen
    raise AssertionError(f"no {want!r} within {timeout}s; got {seen}")


def start(
    ns: NetNS, kubeconfig: Path, notify_path: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    argv = agent_argv([PREFIX], "n1", kubeconfig, "kube-system", "--metrics-address", "off")
    return ns.popen(argv, "agent", env={"NOTIFY_SOCKET": notify_path, **(env or {})})


def adopted(ns: NetNS, lifetime: int) -> None:
    """What a previous run of the agent left on lo: ADOPTED, with ``lifetime`` seconds to live."""
    life = str(lifetime)
    ip("-n", ns.name, "addr", "add", f"{ADOPTED}/32", "dev", "lo", "valid_lft", life, "preferred_lft", life)


def held(ns: NetNS) -> set[str]:
    return {a["local"] for a in ns.addresses() if a["prefixlen"] == 32}


def test_ready_once_the_adopted_addresses_are_held_with_no_apiserver(
    tmp_path: Path, notify: tuple[socket.socket, str]
) -> None:
    """An apiserver that does not answer at boot must not hold the start back until systemd's start
    timeout fails it: READY=1 comes from the first read of the interface, and what a previous run left
    stays (renewed, not removed)."""
    sock, path = notify
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE)
    with NetNS(tmp_path) as ns:
        adopted(ns, 30)
        t0 = time.monotonic()
        agent = start(ns, kubeconfig, path)
        seen = received(sock, "READY=1", 20)
        took = time.monotonic() - t0
        assert "STATUS=holding 1 adopted addresses; waiting for the API" in seen[-1], seen
        assert took < 10, f"READY=1 after {took:.1f}s"
        assert held(ns) == {ADOPTED}
        assert agent.poll() is None
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0


def test_a_half_written_kubeconfig_copy_exits_for_a_fresh_one_keeping_the_addresses(
    tmp_path: Path, notify: tuple[socket.socket, str]
) -> None:
    """k3s truncates and rewrites its kubeconfigs in place, and LoadCredential= may copy one half-written.
    The copy never changes: after reading it again for a while the agent exits with EX_TEMPFAIL, which the
    unit turns into a restart (a fresh copy) rather than a failure, and leaves the addresses alone."""
    sock, path = notify
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "kubeconfig").write_text(UNREACHABLE[: len(UNREACHABLE) // 2])
    with NetNS(tmp_path) as ns:
        adopted(ns, 60)
        agent = start(ns, creds / "kubeconfig", path, env={"CREDENTIALS_DIRECTORY": str(creds)})
        received(sock, "READY=1", 20)
        assert agent.wait(30) == EX_TEMPFAIL
        assert held(ns) == {ADOPTED}
    log = (tmp_path / f"{ns.name}-agent.log").read_text()
    assert "does not parse" in log and "for a restart with a fresh copy" in log, log
    assert "Traceback" not in log, log


@pytest.mark.cluster
def test_a_kubeconfig_completed_after_the_start_is_used(
    tmp_path: Path, notify: tuple[socket.socket, str], control_plane: ControlPlane, agent_kubeconfig: Path
) -> None:
    """A kubeconfig given by path that is empty at start (k3s truncated it) and complete a moment later:
    the agent reads it again and syncs, with no restart."""
    sock, path = notify
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")
    relay = ApiRelay(control_plane.state.apiserver_port, tmp_path)
    try:
        with NetNS(tmp_path) as ns:
            relay.attach(ns)
            agent = start(ns, kubeconfig, path)
            received(sock, "READY=1", 20)
            kubeconfig.write_text(agent_kubeconfig.read_text())
            received(sock, "STATUS=holding 0 addresses", 30)
            assert agent.poll() is None
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(15) == 0
        log = (tmp_path / f"{ns.name}-agent.log").read_text()
        assert "is empty; reading it again until it is complete" in log, log
    finally:
        relay.close()


def test_no_arguments_prints_the_help_and_succeeds() -> None:
    """`nix run .#l3lb` runs the program with no arguments: the help, exit 0 (not click's usage error)."""
    out = subprocess.run([sys.executable, "-m", "l3lb"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Commands:" in out.stdout and "run" in out.stdout


@pytest.mark.nix
def test_every_listed_metric_is_served_under_the_units_proc_settings(tmp_path: Path) -> None:
    """The unit's /proc settings (nixos/service.nix) applied as systemd applies them, by a procfs mounted
    with the matching options in a mount namespace of the agent's own (ProtectProc= is hidepid=,
    ProcSubset= is subset=). Every metric the README lists, and prometheus-client's process metrics (which
    need /proc/stat), are served."""
    unit = nix_eval('import ./nixos/service.nix { execStart = "l3lb"; credentials = [ "kubeconfig:/k" ]; }')
    assert isinstance(unit, dict)
    options = [f"hidepid={unit['ProtectProc']}"] if "ProtectProc" in unit else []
    options += [f"subset={unit['ProcSubset']}"] if "ProcSubset" in unit else []
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"`(l3lb_\w+)", readme[readme.index("**Metrics**") :][:3000]))
    assert len(listed) > 10, listed
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE)
    argv = agent_argv([PREFIX], "n1", kubeconfig, "kube-system", "--metrics-address", "127.0.0.1:9655")
    mount = f'mount -t proc -o {",".join(options) or "defaults"} proc /proc && exec "$@"'
    with NetNS(tmp_path) as ns:
        ns.popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", *argv], "agent")
        get = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9655/metrics').read().decode())"
        body = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "l3lb_" not in body:
            body = ns.run([sys.executable, "-c", get], check=False).stdout
            time.sleep(0.2)
    served = set(re.findall(r"^# TYPE (\w+)", body, re.M))
    assert listed - served == set(), f"listed in the README but not served: {listed - served}"
    samples = {line.split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
    process = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"}
    assert process <= samples, f"process metrics missing under {options}: {process - samples}"
