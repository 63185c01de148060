"""The whole path on one machine: a real control plane, N nodes each running FRR (zebra + bgpd) and an l3lb
agent, a router that peers BGP unnumbered with every node, and a client behind the router.

    client C (192.0.2.2) -- R (AS 65000, 192.0.2.1) -- eth-n1 / eth-r -- node 1 (AS 65101): FRR + l3lb + "pod"
                                                    -- eth-n2 / eth-r -- node 2 (AS 65102): ...

Used by the integration tests, the convergence benchmark and ``make demo``. Each node's FRR config is the
lab's own peering lines plus exactly what the NixOS module generates, evaluated from ``nixos/frr.nix``
with ``nix-instantiate``. "Pods" are small HTTP servers in the node namespaces answering with their node's
name; the lab makes the matching Pod objects Ready or not in the API.

FRR settings (both sides): ``frr defaults datacenter``; ``coalesce-time 100`` (the default 1000 ms
update-group coalescing delays the first change after a session comes up by ~1 s); explicit router-ids (else
zebra's follows the highest lo address: a service VIP); ``ipv6 nd ra-lifetime 0`` (no default routes from
RAs); IPv6 DAD off in every namespace (tentative link-locals delay BGP by 2-3 s). The router has
``bgp bestpath as-path multipath-relax`` and ``maximum-paths 16`` for ECMP across nodes of different ASNs,
and ``fib_multipath_hash_policy=1`` to spread flows by L4 hash. ``zebra work-queue`` stays at FRR's 10 ms
(the module renders 0 by default; bench/peers.py measures both).

Options for the uplinks tests (``tests/lab/test_uplinks.py``): ``uplinks={...}`` gives the nodes nothing but
what ``nixos/frr.nix`` renders with that ``uplinks`` argument (plus NixOS' frr.conf header), loaded as NixOS
does under FRR's default ``traditional`` profile, with bfdd; ``router_bfd`` runs BFD on the router's side;
``switch`` puts an L2 bridge between the router and each node (a node's link going down is then no carrier
loss at the router); ``cluster=False`` leaves out Kubernetes (no control plane, Nodes or agents).
``L3LB_LAB_UPLINKS=1`` in the environment makes ``uplinks={}`` with ``router_bfd`` every lab's default, to run
any lab test on the rendered config (not the default: tests/support/soak.py restarts FRR from zebra.conf and
bgpd.conf, which such a node does not have).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import agent_argv
from kubelet import (
    cordon,
    create_lb_service,
    create_node,
    create_pod,
    grant_leases,
    set_node_annotation,
    set_pod_ready,
    wait_for,
)
from kubernetes import client, config, utils
from netns import ApiRelay, NetlinkWatch, NetNS, ip
from testenv import NIXPKGS_LIB, ControlPlane

REPO = Path(__file__).resolve().parents[2]
FRR = Path("/usr/lib/frr")
PREFIX, PREFIX6 = "10.0.100.0/24", "fd00:100::/64"
VIP, VIP6 = "10.0.100.5", "fd00:100::5"
ROUTER_ASN = 65000
NAMESPACE = "lab"
APP = {"app": "echo"}
HTTP_PORT = 80
CLIENT_IP, ROUTER_CLIENT_IP = "192.0.2.2", "192.0.2.1"
CLIENT_IP6, ROUTER_CLIENT_IP6 = "2001:db8:c::2", "2001:db8:c::1"
PY = "/usr/bin/python3"  # inside namespaces: the system Python, not a user-level shim

POD_SERVER = """
import http.server, socket, socketserver, sys
name = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(name))); self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a): pass
class Server(socketserver.ThreadingTCPServer):  # IPv6 and IPv4 (mapped) on one socket
    address_family = socket.AF_INET6
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", int(sys.argv[2])), H).serve_forever()
"""

CLIENT = """
import collections, http.client, json, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = collections.Counter()
for _ in range(n):
    try:
        c = http.client.HTTPConnection(ip, port, timeout=2); c.request("GET", "/")
        seen[c.getresponse().read().decode()] += 1; c.close()
        if (took := time.monotonic() - start - t) > 0.5:
            slow.append((round(t, 3), round(took, 3)))
    except OSError as e:
        seen["error: " + type(e).__name__] += 1
print(json.dumps(seen))
"""


REQUESTS = """
import collections, http.client, json, sys, time
ip, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
seen, errors, slow = collections.Counter(), [], []
start = time.monotonic()
n = 0
while (now := time.monotonic()) < start + seconds:
    time.sleep(max(0.0, start + n / rate - now))
    n += 1
    t = time.monotonic() - start
    try:
        c = http.client.HTTPConnection(ip, port, timeout=2); c.request("GET", "/")
        seen[c.getresponse().read().decode()] += 1; c.close()
        if (took := time.monotonic() - start - t) > 0.5:
            slow.append((round(t, 3), round(took, 3)))
    except OSError as e:
        errors.append((round(t, 3), type(e).__name__))
print(json.dumps({"served": seen, "errors": errors, "slow": slow, "requests": n}))
"""


def frr_snippet(
    prefixes: list[str],
    asn: int,
    classes: int = 0,
    pools: list[dict] | None = None,
    uplinks: dict | None = None,
    drain: bool = True,
) -> str:
    """What the NixOS module appends to services.frr.config, from its pure Nix function; ``pools`` as the
    module passes them (name, prefixes, bgp attributes); ``uplinks`` as frr.nix takes it (None: null);
    ``drain``: the drain entry, as the module renders it by default."""
    args = f"prefixes = {nix_list(prefixes)}; asn = {asn}; classes = {classes}; drain = {str(drain).lower()};"
    if pools:
        args += f" pools = builtins.fromJSON {json.dumps(json.dumps(pools))};"
    if uplinks is not None:
        args += f" uplinks = builtins.fromJSON {json.dumps(json.dumps(uplinks))};"
    return nix_eval(f"import ./nixos/frr.nix {{ {args} }}")


def nixos_frr_conf(hostname: str, config: str) -> str:
    """/etc/frr/frr.conf as NixOS' FRR module writes it from services.frr.config (no ``frr defaults``)."""
    return (
        f"! FRR configuration\n!\nhostname {hostname}\nlog syslog\nservice password-encryption\n"
        f"service integrated-vtysh-config\n!\n{config}\n!\nend\n"
    )


def nix_eval(expr: str) -> Any:
    """Evaluates a Nix expression (paths relative to the repository) with nix-instantiate, as JSON."""
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def eval_module(settings: str) -> dict:
    """The NixOS module evaluated with nixpkgs' lib against ``settings`` (tests/nix/eval-module.nix)."""
    result = nix_eval(
        f"import ./tests/nix/eval-module.nix {{ libPath = {NIXPKGS_LIB}; settings = {settings}; }}"
    )
    assert isinstance(result, dict)
    return result


def nix_list(items: list[str]) -> str:
    return "[ " + " ".join(json.dumps(i) for i in items) + " ]"


def _interface_ra(name: str) -> str:
    return (
        f"interface {name}\n ipv6 nd ra-interval 3\n ipv6 nd ra-lifetime 0\n no ipv6 nd suppress-ra\nexit\n"
    )


@dataclass
class Frr:
    """FRR's daemons in one namespace, as children we can wait on (no daemonising, no zombies).

    ``start`` gives zebra, bgpd (and bfdd, with a config of its own) each their file, under the profile those
    files name. ``start_integrated`` loads one file as NixOS does: the daemons start empty under FRR's
    ``traditional`` profile (NixOS writes no ``frr defaults``), then ``vtysh -b`` sends each its part of
    ``frr.conf``; a daemon restarted alone gets its part again with ``vtysh -b -d DAEMON``, as frrinit.sh
    does."""

    ns: NetNS
    dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    integrated: bool = False
    profile: str | None = None
    names: list[str] = field(default_factory=list)
    """The daemons started, in order (those killed too)."""

    def start(self, zebra_conf: str, bgpd_conf: str, bfdd_conf: str | None = None) -> None:
        files = {"zebra.conf": zebra_conf, "bgpd.conf": bgpd_conf}
        if bfdd_conf is not None:
            files["bfdd.conf"] = bfdd_conf
        self._files(files, vtysh="")
        for daemon in ("zebra", "bgpd", "bfdd") if bfdd_conf is not None else ("zebra", "bgpd"):
            self.spawn(daemon)

    def start_integrated(self, config: str, *, bfdd: bool = True, profile: str = "traditional") -> None:
        self.integrated, self.profile = True, profile
        self._files({"frr.conf": config, "empty.conf": ""}, vtysh="service integrated-vtysh-config\n")
        daemons = ("zebra", "bgpd", "bfdd") if bfdd else ("zebra", "bgpd")
        for daemon in daemons:
            self.spawn(daemon)
        for daemon in daemons:
            self._wait_vty(daemon)
        self._vtysh_b()

    def _files(self, files: dict[str, str], vtysh: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "vtysh.conf").write_text(vtysh)
        for name, text in files.items():
            (self.dir / name).write_text(text)
        frr = pwd.getpwnam("frr")
        for path in [self.dir, *self.dir.iterdir()]:
            os.chown(path, frr.pw_uid, frr.pw_gid)

    def spawn(self, daemon: str) -> subprocess.Popen:
        """Starts ``daemon`` with its file (``empty.conf`` when integrated); zebra: waits for its socket."""
        conf = self.dir / ("empty.conf" if self.integrated else f"{daemon}.conf")
        argv = [str(FRR / daemon), "-f", str(conf), "-i", str(self.dir / f"{daemon}.pid")]
        argv += ["-z", str(self.dir / "zserv.api"), "--vty_socket", str(self.dir), "-P", "0"]
        if self.profile:
            argv += ["-F", self.profile]
        if daemon == "bfdd":  # FRR 8.4: else every namespace's bfdd re-binds the one default control socket
            argv += ["--bfdctl", str(self.dir / "bfdd.sock")]
        # A socket left by an earlier run would pass for the new daemon's.
        (self.dir / f"{daemon}.vty").unlink(missing_ok=True)
        if daemon == "zebra":
            (self.dir / "zserv.api").unlink(missing_ok=True)
        proc = self.ns.popen(argv, daemon)
        self.procs.append(proc)
        self.daemons[daemon] = proc
        if daemon not in self.names:
            self.names.append(daemon)
        if daemon == "zebra":
            _wait(lambda: (self.dir / "zserv.api").exists(), 10, "zebra's zserv socket")
        return proc

    def kill(self, daemon: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Sends ``sig`` to ``daemon`` alone; after SIGKILL or SIGTERM, waits for it and forgets it."""
        proc = self.daemons[daemon]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(10)
            self.procs.remove(proc)
            self.ns.procs.remove(proc)
            del self.daemons[daemon]

    def restart(self, daemon: str) -> None:
        """Starts ``daemon`` again (after ``kill``), with its configuration."""
        self.spawn(daemon)
        if self.integrated:
            self._wait_vty(daemon)
            self._vtysh_b(daemon)

    def _wait_vty(self, daemon: str) -> None:
        _wait(lambda: (self.dir / f"{daemon}.vty").exists(), 10, f"{daemon}'s vty socket")

    def _vtysh_b(self, daemon: str | None = None) -> None:
        argv = ["vtysh", "--config_dir", str(self.dir), "--vty_socket", str(self.dir), "-b"]
        argv += ["-d", daemon] if daemon else []
        out = self.ns.run(argv, env={**os.environ, "HOME": str(self.dir)}, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"vtysh -b failed ({out.returncode}): {out.stdout}{out.stderr}")

    def vtysh(self, *commands: str) -> str:
        argv = ["vtysh", "--config_dir", str(self.dir), "--vty_socket", str(self.dir)]
        for c in commands:
            argv += ["-c", c]
        # vtysh appends every command to $HOME/.history_frr: keep that in the lab, not in root's home.
        return self.ns.run(argv, env={**os.environ, "HOME": str(self.dir)}).stdout

    def vtysh_json(self, command: str) -> dict:
        return json.loads(self.vtysh(command) or "{}")

    def established(self) -> int:
        try:
            peers = self.vtysh_json("show bgp ipv4 unicast summary json").get("peers", {})
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            return 0
        return sum(p.get("state") == "Established" for p in peers.values())


@dataclass
class LabNode:
    name: str
    index: int
    ns: NetNS
    frr: Frr
    uplink: str  # the router's interface towards this node
    argv: list[str]
    agent: subprocess.Popen | None = None
    pod_server: subprocess.Popen | None = None

    @property
    def asn(self) -> int:
        return 65100 + self.index

    @property
    def pod(self) -> str:
        return f"echo-{self.name}"

    def start_agent(self) -> None:
        self.agent = self.ns.popen(self.argv, "agent")

    def agent_log(self) -> str:
        assert self.ns.logdir is not None
        return (self.ns.logdir / f"{self.ns.name}-agent.log").read_text()


class RouterRoutes(NetlinkWatch):
    """The router's kernel routes to Service IPs: ``state[ip]`` = the set of nodes it sends traffic to,
    updated on every route or nexthop change, with ``changes`` = [(time, ip, nodes)]; ``weights[ip]`` = the
    weight of each node's next hop, with ``weight_changes`` = [(time, ip, weights)]."""

    def __init__(self, ns: NetNS, uplinks: dict[str, str]) -> None:
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE

        self.groups = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | (1 << 31)  # RTNLGRP_NEXTHOP = 32
        self.uplinks = uplinks  # router interface -> node name
        self.state: dict[str, frozenset[str]] = {}
        self.changes: list[tuple[float, str, frozenset[str]]] = []
        self.weights: dict[str, dict[str, int]] = {}
        self.weight_changes: list[tuple[float, str, dict[str, int]]] = []
        self.names: dict[int, str] = {}
        super().__init__(ns)

    def setup(self, query) -> None:  # type: ignore[no-untyped-def]
        self.handle({}, time.monotonic(), query)

    def handle(self, msg: dict, now: float, query) -> None:  # type: ignore[no-untyped-def]
        if not self.names:
            self.names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in query.get_links()}
        current: dict[str, frozenset[str]] = {}
        weights: dict[str, dict[str, int]] = {}
        routes = [*query.get_routes(family=socket.AF_INET, table=254)]
        routes += query.get_routes(family=socket.AF_INET6, table=254)
        for route in routes:
            dst = route.get_attr("RTA_DST")
            if not dst or (route["dst_len"], dst[:5]) not in ((32, "10.0."), (128, "fd00:")):
                continue
            multipath = route.get_attr("RTA_MULTIPATH")
            hops = (
                [(nh["oif"], nh["hops"] + 1) for nh in multipath]
                if multipath
                else [(route.get_attr("RTA_OIF"), 1)]
            )
            named = {self.uplinks.get(self.names.get(o, ""), f"?{o}"): w for o, w in hops if o}
            current[dst] = frozenset(named)
            weights[dst] = named
        for dst in current.keys() | self.state.keys():
            nodes = current.get(dst, frozenset())
            if self.state.get(dst, frozenset()) != nodes:
                self.changes.append((now, dst, nodes))
            if self.weights.get(dst, {}) != weights.get(dst, {}):
                self.weight_changes.append((now, dst, weights.get(dst, {})))
        self.state = current
        self.weights = weights

    def nodes(self, ip: str) -> frozenset[str]:
        with self._cond:
            return self.state.get(ip, frozenset())

    def wait_for(self, ip: str, nodes: set[str], after: float, timeout: float = 30.0) -> float:
        """The time at which the route to ``ip`` first went to exactly ``nodes``, at or after ``after``."""
        want = frozenset(nodes)

        def found() -> float | None:
            if self.state.get(ip, frozenset()) != want:
                return None
            return next((t for t, d, n in reversed(self.changes) if d == ip and n == want), after)

        return max(self.wait_until(found, timeout), after)

    def wait_weights(self, ip: str, want: dict[str, int], after: float, timeout: float = 20.0) -> float:
        """The time at which the route to ``ip`` first had exactly these next-hop weights (as the
        router's kernel has them), at or after ``after`` (else ``after``); the route must still have them."""

        def found() -> float | None:
            if self.weights.get(ip) != want:
                return None
            return next((t for t, d, w in self.weight_changes if d == ip and t >= after and w == want), after)

        try:
            return self.wait_until(found, timeout)
        except TimeoutError:
            raise AssertionError(f"router weights of {ip}: {self.weights.get(ip)}, expected {want}") from None


class Lab:
    """Build with ``with Lab(...) as lab:``; everything (namespaces, processes, temp files) goes on exit."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        address_lifetime: int = 10,
        weight_classes: int = 0,
        workdir: Path | None = None,
        control_plane: ControlPlane | None = None,
        agents: bool = True,
        frr_pools: list[dict] | None = None,
        uplinks: dict | None = None,
        router_bfd: bool = False,
        switch: bool = False,
        cluster: bool = True,
        drain_seconds: int = 0,
        log=print,
    ) -> None:  # type: ignore[no-untyped-def]
        self.n = nodes
        self.drain_seconds = drain_seconds
        """The agents' --drain-seconds (their FRR config has the drain entry whatever it is, as the module
        renders it by default)."""
        if uplinks is None and os.environ.get("L3LB_LAB_UPLINKS") == "1":
            uplinks, router_bfd = {}, True  # to try any lab test on the rendered uplinks config
        self.frr_pools = frr_pools
        """Named pools with BGP attributes, for the nodes' FRR config (the agents keep the one prefix)."""
        self.uplinks = uplinks
        """The nodes' FRR config is all rendered by nixos/frr.nix with these ``uplinks`` (``interfaces``
        and ``routerId`` filled in), under FRR's default ``traditional`` profile, loaded as NixOS does
        (``Frr.start_integrated``); only ``hostname`` is the lab's. None: the lab's own peering lines under
        ``frr defaults datacenter``, plus the rendered redistribution."""
        self.router_bfd = router_bfd
        """The router runs bfdd and BFD (100 ms x 3, as frr.nix's default) on every node session."""
        self.switch = switch
        """An L2 switch (a bridge per node, in a namespace of its own) between the router and each node: a
        node's link going down is then not a carrier loss at the router."""
        self.cluster = cluster
        """Without it, no control plane, Nodes or agents: FRR and the network only."""
        self.agents = agents and cluster
        self.address_lifetime = address_lifetime
        self.weight_classes = weight_classes
        """Weighted anycast: the agents run with --weighted and FRR gets the class entries."""
        self._own_tmp = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="l3lb-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # FRR drops to user frr and must reach its folders
        self.cp = control_plane
        self._own_cp = control_plane is None
        self.log = log
        self.nodes: list[LabNode] = []
        self.namespaces: list[NetNS] = []
        self.relay: ApiRelay | None = None
        self.router: NetNS
        self.client: NetNS
        self.routes: RouterRoutes

    # ---- building
    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        t0 = time.monotonic()
        if self.cluster:
            self._control_plane(t0)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.router = self._netns(logs)
        self.client = self._netns(logs)
        if self.switch:
            self.switch_ns = self._netns(logs)
        r = self.router.name
        self.router.veth("eth-c", self.client, "eth-r")
        ip("-n", r, "addr", "add", f"{ROUTER_CLIENT_IP}/24", "dev", "eth-c")
        ip("-n", self.client.name, "addr", "add", f"{CLIENT_IP}/24", "dev", "eth-r")
        ip("-n", self.client.name, "route", "add", "default", "via", ROUTER_CLIENT_IP)
        ip("-n", r, "addr", "add", f"{ROUTER_CLIENT_IP6}/64", "dev", "eth-c")
        ip("-n", self.client.name, "addr", "add", f"{CLIENT_IP6}/64", "dev", "eth-r")
        ip("-n", self.client.name, "-6", "route", "add", "default", "via", ROUTER_CLIENT_IP6)
        self.router.sysctl("net.ipv4.ip_forward", "1")
        self.router.sysctl("net.ipv6.conf.all.forwarding", "1")
        self.router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")

        for i in range(1, self.n + 1):
            self._add_node(i, logs)
        router_frr = Frr(self.router, self.workdir / "frr-r")
        router_frr.start(self._router_zebra(), self._router_bgpd(), self._router_bfdd())
        self.router_frr = router_frr
        self.routes = RouterRoutes(self.router, {n.uplink: n.name for n in self.nodes})
        _wait(lambda: router_frr.established() == self.n, 30, "BGP sessions to every node")
        self.log(f"{self.n} nodes peering BGP unnumbered with the router ({time.monotonic() - t0:.1f}s)")
        if self.agents:
            self.start_agents()

    def _control_plane(self, t0: float) -> None:
        if self.cp is None:
            self.cp = ControlPlane(self.workdir / "cp").start()
        api = config.new_client_from_config(str(self.cp.admin_kubeconfig))
        self.core = client.CoreV1Api(api)
        with contextlib.suppress(utils.FailToCreateError):
            utils.create_from_yaml(api, str(REPO / "deploy" / "rbac.yaml"))
        self.kubeconfig = self.cp.identity("l3lb-agent", ["l3lb:agents"])
        with contextlib.suppress(client.ApiException):
            self.core.create_namespace({"metadata": {"name": NAMESPACE}})
            grant_leases(client.RbacAuthorizationV1Api(api), NAMESPACE)
        self.relay = ApiRelay(self.cp.state.apiserver_port, self.workdir)
        self.log(f"control plane ready ({time.monotonic() - t0:.1f}s)")

    def start_agents(self) -> None:
        for node in self.nodes:
            node.start_agent()

    def _netns(self, logs: Path) -> NetNS:
        ns = NetNS(logs)
        self.namespaces.append(ns)
        return ns

    def _add_node(self, i: int, logs: Path) -> None:
        name = f"node{i}"
        ns = self._netns(logs)
        uplink = f"eth-n{i}"
        if self.switch:  # router eth-nI -- sw-rI [bridge br-I] sw-nI -- eth-r node I
            sw = self.switch_ns
            self.router.veth(uplink, sw, f"sw-r{i}")
            sw.veth(f"sw-n{i}", ns, "eth-r")
            bridge = f"br-{i}"
            ip("-n", sw.name, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
            for port in (f"sw-r{i}", f"sw-n{i}"):
                ip("-n", sw.name, "link", "set", port, "master", bridge)
            ip("-n", sw.name, "link", "set", bridge, "up")
        else:
            self.router.veth(uplink, ns, "eth-r")
        argv: list[str] = []
        if self.cluster:
            assert self.relay is not None
            self.relay.attach(ns)
            weighted = (
                ("--weighted", "--weight-classes", str(self.weight_classes)) if self.weight_classes else ()
            )
            argv = agent_argv(
                [PREFIX, PREFIX6],
                name,
                self.kubeconfig,
                NAMESPACE,
                "--address-lifetime",
                str(self.address_lifetime),
                "--drain-seconds",
                str(self.drain_seconds),
                "--log-level",
                "debug",  # "handled ..." lines: what a test waits for before it asserts an absence
                *weighted,
            )
        node = LabNode(name, i, ns, Frr(ns, self.workdir / f"frr-{name}"), uplink, argv)
        if self.uplinks is not None:
            uplinks = {"interfaces": ["eth-r"], "routerId": f"10.255.0.{100 + i}", **self.uplinks}
            rendered = frr_snippet([PREFIX, PREFIX6], node.asn, self.weight_classes, self.frr_pools, uplinks)
            bfd = uplinks.get("bfd", {}).get("enable", True)
            node.frr.start_integrated(nixos_frr_conf(name, rendered), bfdd=bfd)
        else:
            bgpd = (
                f"frr defaults datacenter\nhostname {name}\n!\nrouter bgp {node.asn}\n"
                f" bgp router-id 10.255.0.{100 + i}\n no bgp ebgp-requires-policy\n coalesce-time 100\n"
                " neighbor eth-r interface remote-as external\n"
                " address-family ipv6 unicast\n  neighbor eth-r activate\n exit-address-family\nexit\n!\n"
            ) + frr_snippet([PREFIX, PREFIX6], node.asn, self.weight_classes, self.frr_pools)
            node.frr.start(f"frr defaults datacenter\nhostname {name}\n" + _interface_ra("eth-r"), bgpd)
        if self.cluster:
            create_node(self.core, name)
        node.pod_server = ns.popen([PY, "-c", POD_SERVER, name, str(HTTP_PORT)], "pod")
        self.nodes.append(node)

    def _router_zebra(self) -> str:
        return "frr defaults datacenter\nhostname router\n" + "".join(
            _interface_ra(n.uplink) for n in self.nodes
        )

    def _router_bfdd(self) -> str | None:
        if not self.router_bfd:
            return None
        return (
            "frr defaults datacenter\nhostname router\n!\nbfd\n profile NODES\n  detect-multiplier 3\n"
            "  receive-interval 100\n  transmit-interval 100\n exit\nexit\n"
        )

    def _router_bgpd(self) -> str:
        neighbors = "".join(f" neighbor {n.uplink} interface peer-group NODES\n" for n in self.nodes)
        if self.router_bfd:
            neighbors = " neighbor NODES bfd profile NODES\n" + neighbors
        return f"""frr defaults datacenter
hostname router
!
ip prefix-list FROM-NODES seq 10 permit {PREFIX} ge 32
ip prefix-list TO-NODES seq 10 permit 192.0.2.0/24
route-map FROM-NODES permit 10
 match ip address prefix-list FROM-NODES
exit
route-map TO-NODES permit 10
 match ip address prefix-list TO-NODES
exit
ipv6 prefix-list FROM-NODES6 seq 10 permit {PREFIX6} ge 128
ipv6 prefix-list TO-NODES6 seq 10 permit 2001:db8:c::/64
route-map FROM-NODES6 permit 10
 match ipv6 address prefix-list FROM-NODES6
exit
route-map TO-NODES6 permit 10
 match ipv6 address prefix-list TO-NODES6
exit
!
router bgp {ROUTER_ASN}
 bgp router-id 10.255.0.1
 no bgp ebgp-requires-policy
 coalesce-time 100
 bgp bestpath as-path multipath-relax
 neighbor NODES peer-group
 neighbor NODES remote-as external
{neighbors} !
 address-family ipv4 unicast
  redistribute connected route-map TO-NODES
  neighbor NODES route-map FROM-NODES in
  neighbor NODES route-map TO-NODES out
  maximum-paths 16
 exit-address-family
 address-family ipv6 unicast
  neighbor NODES activate
  redistribute connected route-map TO-NODES6
  neighbor NODES route-map FROM-NODES6 in
  neighbor NODES route-map TO-NODES6 out
  maximum-paths 16
 exit-address-family
exit
"""

    def down(self) -> None:
        for ns in reversed(self.namespaces):
            ns.close()
        self.namespaces.clear()
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self._own_cp and self.cp is not None:
            self.cp.stop()
            self.cp = None
        if self._own_tmp:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- acting as users and kubelets
    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    def create_service(
        self,
        name: str = "echo",
        ip: str = f"{VIP},{VIP6}",
        policy: str = "Local",
        annotations: dict[str, str] | None = None,
        selector: dict[str, str] | None = None,
    ) -> None:
        """A LoadBalancer Service asking for ``ip`` (both families by default: a dual-stack Service)."""
        create_lb_service(
            self.core,
            NAMESPACE,
            name,
            selector=selector or APP,
            policy=policy,
            ips=ip,
            port=HTTP_PORT,
            target_port=HTTP_PORT,
            families=["IPv4", "IPv6"] if "," in ip else None,
            annotations=annotations,
        )

    def set_ready(self, node: str, ready: bool) -> None:
        """Makes the pod on ``node`` Ready or not (creating it the first time)."""
        self._pod(node, self.node(node).pod, 10, ready)

    def ready_pods(self, node: str, n: int) -> None:
        """Exactly ``n`` (at most 4) of the extra pods ``echo-<node>-<k>`` on ``node`` Ready; the node's
        pod server answers for all of them."""
        for k in range(4):
            self._pod(node, f"echo-{node}-{k}", 20 + k, k < n)

    def _pod(self, node: str, name: str, host: int, ready: bool) -> None:
        index = self.node(node).index
        try:
            set_pod_ready(self.core, NAMESPACE, name, ready)
        except client.ApiException as err:
            if err.status != 404:
                raise
            create_pod(
                self.core,
                NAMESPACE,
                name,
                node,
                f"10.244.{index}.{host},fd00:244:{index}::{host}",
                labels=APP,
                ready=ready,
                port=HTTP_PORT,
            )

    def class_interfaces_by_hand(self) -> None:
        """Makes on every node the weight-class interfaces an agent with --weighted would make here (veth
        pairs: this kernel has no dummy driver), for runs that move addresses by hand."""
        for node in self.nodes:
            for w in range(1, self.weight_classes + 1):
                ns = node.ns.name
                ip("-n", ns, "link", "add", f"l3lbw{w}", "type", "veth", "peer", "name", f"l3lbw{w}p")
                ip("-n", ns, "link", "set", f"l3lbw{w}", "up")
                ip("-n", ns, "link", "set", f"l3lbw{w}p", "up")

    def cordon(self, node: str, on: bool = True) -> None:
        cordon(self.core, node, on)

    def drain(self, node: str, on: bool = True) -> None:
        """``kubectl annotate node NODE l3lb.io/drain=true`` (off: ``l3lb.io/drain-``)."""
        set_node_annotation(self.core, node, "l3lb.io/drain", "true" if on else None)

    def wait_handled(self, node: str, what: str, since: int = 0, timeout: float = 15.0) -> None:
        """Waits until the agent on ``node`` has acted on a message (its debug line "handled ... <what>"),
        looking in its log from offset ``since`` (``len(agent_log())`` before the change)."""
        n = self.node(node)
        wait_for(
            lambda: any("handled" in line and what in line for line in n.agent_log()[since:].splitlines()),
            timeout=timeout,
            what=f"{node}'s agent to handle {what}",
        )

    def router_honours_graceful_shutdown(self, on: bool) -> None:
        """FRR lowers LOCAL_PREF to 0 by itself for a path it receives over eBGP with GRACEFUL_SHUTDOWN
        (bgp_update() in bgpd/bgp_route.c, after the inbound route-map). Off: the router's inbound
        route-maps delete the community first, as a router that does not honour it would ignore it; the
        routes are then asked for again (route refresh)."""
        cmds = ["configure terminal", "bgp community-list standard GSHUT seq 5 permit graceful-shutdown"]
        for rm in ("FROM-NODES", "FROM-NODES6"):
            cmds += [f"route-map {rm} permit 10", f"{'no ' if on else ''}set comm-list GSHUT delete", "exit"]
        cmds += ["end", "clear bgp ipv4 unicast * soft in", "clear bgp ipv6 unicast * soft in"]
        self.router_frr.vtysh(*cmds)

    def router_paths(self, ip: str = VIP) -> dict[str, dict[str, Any]]:
        """The router's BGP paths to ``ip`` by node: {"localpref", "community", "multipath", "best"}."""
        v6 = ":" in ip
        host = f"{ip}/{128 if v6 else 32}"
        data = self.router_frr.vtysh_json(f"show bgp {'ipv6' if v6 else 'ipv4'} unicast {host} json")
        names = {n.uplink: n.name for n in self.nodes}
        out = {}
        for p in data.get("paths") or []:
            peer = p.get("peer", {}).get("interface") or p.get("peer", {}).get("hostname", "?")
            out[names.get(peer, peer)] = {
                "localpref": p.get("locPrf", p.get("localpref")),
                "community": (p.get("community") or {}).get("string", ""),
                "multipath": bool(p.get("multipath")),
                "best": bool((p.get("bestpath") or {}).get("overall")),
            }
        return out

    def requests(self, ip: str, seconds: float, rate: float = 20.0) -> subprocess.Popen:
        """A client that makes ``rate`` HTTP requests a second to ``ip`` for ``seconds``, each on a new
        connection, in the background; ``requests_result`` reads what it saw."""
        return self.client.popen(
            [PY, "-c", REQUESTS, ip, str(HTTP_PORT), str(seconds), str(rate)], "requests"
        )

    def signal_agent(self, node: str, sig: signal.Signals) -> int | None:
        n = self.node(node)
        assert n.agent is not None
        n.agent.send_signal(sig)
        code = n.agent.wait(15)
        n.ns.procs.remove(n.agent)
        return code

    # ---- observing
    def announcing(self, ip: str = VIP) -> list[str]:
        return [n.name for n in self.nodes if self.held(n.name, ip)]

    def held(self, node: str, ip: str = VIP) -> set[str]:
        """The interfaces of ``node`` that hold ``ip``: ``lo``, ``l3lbdrain`` and, with weight classes,
        ``l3lbwN``."""
        devs = {"lo", "l3lbdrain", *(f"l3lbw{w}" for w in range(1, self.weight_classes + 1))}
        links = json.loads(ip_json(self.node(node).ns, "addr", "show") or "[]")
        return {
            link["ifname"]
            for link in links
            if link["ifname"] in devs
            and any(a["local"] == ip and a["prefixlen"] in (32, 128) for a in link.get("addr_info", []))
        }

    def router_nexthops(self, ip: str = VIP) -> set[str]:
        """From the router's kernel table, read with ``ip -j route``."""
        host = f"{ip}/128" if ":" in ip else f"{ip}/32"
        out = json.loads(ip_json(self.router, "-6" if ":" in ip else "-4", "route", "show", host) or "[]")
        if not out:
            return set()
        hops = out[0].get("nexthops") or [out[0]]
        names = {n.uplink: n.name for n in self.nodes}
        return {names.get(h.get("dev", ""), h.get("dev", "?")) for h in hops}

    def http_get(self, node: str, url: str) -> tuple[int, str]:
        """GET ``url`` from inside ``node``'s namespace (the agent's metrics listen on its own loopback).

        Returns (status, body); status 0 when nothing answers.
        """
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
            ' print(r.status); print(r.read().decode(), end="")\n'
            'except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode(), end="")\n'
            "except OSError as e:\n print(0); print(e)\n"
        )
        out = self.node(node).ns.run([PY, "-c", code, url]).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    def metrics(self, node: str) -> dict[str, float]:
        """The agent's Prometheus samples on ``node``: {'name{labels}': value}."""
        _, body = self.http_get(node, "http://127.0.0.1:9655/metrics")
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def l3lb(self, node: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Runs the l3lb CLI inside ``node``'s namespace with that node's agent settings."""
        n = self.node(node)
        argv = [sys.executable, "-m", "l3lb", *args]
        if "--prefix" not in args:
            argv += ["--prefix", PREFIX, "--prefix", PREFIX6]
        if "--node-name" not in args:
            argv += ["--node-name", node]
        if "--kubeconfig" not in args:
            argv += ["--kubeconfig", str(self.kubeconfig)]
        if "--lease-namespace" not in args and args[0] == "check":
            argv += ["--lease-namespace", NAMESPACE]
        if "--vty-socket" not in args and args[0] in ("status", "check"):
            argv += ["--vty-socket", str(n.frr.dir)]
        return n.ns.run(argv, check=check)

    def requests_result(self, proc: subprocess.Popen) -> dict[str, Any]:
        """{"served": {node: count}, "errors": [[seconds since its start, error]], "slow": [[seconds since
        its start, seconds it took]] of those that took over 0.5 s,
        "requests": n}."""
        proc.wait(120)
        self.client.procs.remove(proc)
        assert self.client.logdir is not None
        log = self.client.logdir / f"{self.client.name}-requests.log"
        return dict(json.loads(log.read_text().strip().splitlines()[-1]))

    def curl(self, ip: str = VIP, flows: int = 1) -> Counter[str]:
        """``flows`` HTTP requests from the client, each on a new connection (a new source port)."""
        out = self.client.run([PY, "-c", CLIENT, ip, str(HTTP_PORT), str(flows)], timeout=60).stdout
        return Counter(json.loads(out))


def ip_json(ns: NetNS, *args: str) -> str:
    return ip("-j", "-n", ns.name, *args).stdout


def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
