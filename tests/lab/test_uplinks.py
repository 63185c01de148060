"""The node's own BGP sessions as nixos/frr.nix renders them (``uplinks``): the text on a real FRR 8.4 under
FRR's default ``traditional`` profile (ebgp-requires-policy on, IPv6 not activated by default), then in the
lab with nothing but the rendered text on the nodes: what reaches the router, how fast a failed node leaves
the router's multipath with BFD and without, and what graceful restart keeps while bgpd restarts.

Figures: ``sudo .venv/bin/python tests/lab/test_uplinks.py [--trials N]`` measures every case (BFD and no
BFD, graceful restart on and off) and prints the medians; the tests below assert only the fast cases."""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("support", "")]  # run as a script too
from kubelet import wait_for  # noqa: E402
from lab import VIP, VIP6, Frr, Lab, LabNode, frr_snippet, ip, nix_eval, nixos_frr_conf  # noqa: E402
from netns import NetNS  # noqa: E402

VIPS = (VIP, VIP6)


# ---- faults and how long the router takes to drop the node
@dataclass
class Fault:
    name: str
    what: str
    inflict: Callable[[LabNode], None]
    repair: Callable[[LabNode], None]


def _link(up: bool) -> Callable[[LabNode], None]:
    def switch(node: LabNode) -> None:
        ip("-n", node.ns.name, "link", "set", "eth-r", "up" if up else "down")

    return switch


def _signal_frr(sig: signal.Signals) -> Callable[[LabNode], None]:
    def send(node: LabNode) -> None:
        for daemon in list(node.frr.daemons):
            node.frr.kill(daemon, sig)

    return send


def _restart_frr(node: LabNode) -> None:
    for daemon in node.frr.names:
        node.frr.restart(daemon)


LINK_DOWN = Fault("link down", "the node sets its uplink down", _link(False), _link(True))
FRR_KILLED = Fault(
    "FRR killed", "zebra, bgpd (and bfdd) SIGKILLed", _signal_frr(signal.SIGKILL), _restart_frr
)
FRR_HUNG = Fault(
    "FRR hung",
    "zebra, bgpd (and bfdd) SIGSTOPped: a hung node",
    _signal_frr(signal.SIGSTOP),
    _signal_frr(signal.SIGCONT),
)


def hold(lab: Lab, *nodes: str) -> None:
    """``nodes`` hold both Service IPs on lo (no agents: by hand); waits for the router's ECMP route."""
    start = time.monotonic()
    for name in nodes:
        node = lab.node(name)
        for cidr in (f"{VIP}/32", f"{VIP6}/128"):
            node.ns.run(["ip", "addr", "replace", cidr, "dev", "lo"])
    steady(lab, set(nodes), start)


def steady(lab: Lab, nodes: set[str], since: float, timeout: float = 60.0) -> None:
    """Every session up (and BFD up where the router runs it), both Service IPs routed to ``nodes``, and
    still so a second later: a session that has just come up may still flap (see the GR test)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = max(deadline - time.monotonic(), 0.1)
            wait_for(lambda: lab.router_frr.established() == lab.n, left, what="every BGP session")
            if lab.router_bfd:
                wait_for(lambda: bfd_up(lab.router_frr) == lab.n, left, what="every BFD session")
            for vip in VIPS:
                lab.routes.wait_for(vip, nodes, since, timeout=left)
            mark = len(lab.routes.changes)
            time.sleep(1)
            up = lab.router_frr.established() == lab.n
            if (
                up
                and (not lab.router_bfd or bfd_up(lab.router_frr) == lab.n)
                and len(lab.routes.changes) == mark
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError("the lab did not settle")
    except (AssertionError, TimeoutError) as err:
        peers = lab.router_frr.vtysh_json("show bgp neighbors json")
        states = {k: (v.get("bgpState"), v.get("lastResetDueTo")) for k, v in peers.items()}
        raise AssertionError(f"{err}; router's sessions {states}, routes {lab.routes.state}") from None


def bfd_up(frr: Frr) -> int:
    try:
        peers = json.loads(frr.vtysh("show bfd peers json") or "[]")
    except json.JSONDecodeError:
        return 0
    return sum(p.get("status") == "up" for p in peers)


def failover(
    lab: Lab, fault: Fault, victim: str = "node2", timeout: float = 60.0, repair: bool = True
) -> float:
    """Seconds from ``fault`` on ``victim`` until the router's kernel routes both Service IPs to the other
    nodes only; the fault is then repaired and the lab back to steady (unless not ``repair``)."""
    everyone = {n.name for n in lab.nodes}
    steady(lab, everyone, time.monotonic() - 1)
    node = lab.node(victim)
    start = time.monotonic()
    fault.inflict(node)
    try:
        gone = max(lab.routes.wait_for(vip, everyone - {victim}, start, timeout=timeout) for vip in VIPS)
    finally:
        if repair:
            fault.repair(node)
    if repair:
        steady(lab, everyone, start)
    return gone - start


@dataclass
class Restart:
    """bgpd alone killed on a node and started again: when, and how the router's route to VIP changed."""

    restarted: float
    changes: list[tuple[float, frozenset[str]]]
    dropped: int

    def missing(self, victim: str = "node2") -> float:
        """Seconds the route lacked ``victim`` (each drop until its return)."""
        total, since = 0.0, None
        for t, nodes in self.changes:
            if victim not in nodes and since is None:
                since = t
            elif victim in nodes and since is not None:
                total, since = total + t - since, None
        return total


def bgpd_restart(lab: Lab, victim: str = "node2", down: float = 2.0) -> Restart:
    """SIGKILLs bgpd on ``victim``, starts it again ``down`` seconds later, waits for the lab to settle."""
    everyone = {n.name for n in lab.nodes}
    steady(lab, everyone, time.monotonic() - 1)
    node = lab.node(victim)
    peer = node.uplink
    before = lab.router_frr.vtysh_json(f"show bgp neighbors {peer} json")[peer]["connectionsDropped"]
    start = time.monotonic()
    node.frr.kill("bgpd")
    time.sleep(down)
    node.frr.restart("bgpd")
    restarted = time.monotonic() - start
    steady(lab, everyone, start)
    after = lab.router_frr.vtysh_json(f"show bgp neighbors {peer} json")[peer]["connectionsDropped"]
    changes = [(t - start, n) for t, ip_, n in lab.routes.changes if t >= start and ip_ == VIP]
    return Restart(restarted, changes, after - before)


def trials(lab: Lab, fault: Fault, n: int) -> list[float]:
    return [failover(lab, fault) for _ in range(n)]


def figure(times: list[float]) -> str:
    median = statistics.median(times)
    return f"median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}, n={len(times)})"


# ---- the rendered text on a real FRR, loaded as NixOS loads it
UPLINK_CASES = {
    "dual-stack": dict(
        prefixes=["10.0.100.0/24", "fd00:100::/64", "10.0.200.7/32"],
        uplinks={"interfaces": ["eth1", "eth2"], "routerId": "10.255.0.1"},
    ),
    "weighted, default route in, own timers": dict(
        prefixes=["10.0.100.0/24", "fd00:100::/64"],
        classes=4,
        uplinks={
            "interfaces": ["eth1"],
            "remoteAs": 65000,
            "accept": "default",
            "timers": {"keepalive": 10, "hold": 30},
            "bfd": {"detectMultiplier": 5, "receiveInterval": 250, "transmitInterval": 200},
            "gracefulRestart": {"restartTime": 60},
        },
    ),
    "pools, IPv4 only, nothing in, no BFD": dict(
        prefixes=["203.0.113.0/26", "10.0.100.0/24"],
        pools=[
            {"name": "internet", "prefixes": ["203.0.113.0/26"], "bgp": {"communities": ["65000:100"]}},
            {"name": "internal", "prefixes": ["10.0.100.0/24"]},
        ],
        classes=2,
        uplinks={
            "interfaces": ["eth1", "eth2"],
            "remoteAs": "internal",
            "accept": "none",
            "bfd": {"enable": False},
        },
    ),
    "IPv6 only, no graceful restart": dict(
        prefixes=["fd00:100::/64"],
        uplinks={"interfaces": ["eth1"], "gracefulRestart": {"enable": False}},
    ),
}

# What FRR leaves out of its running config because it is FRR's own default (checked otherwise below).
FRR_DEFAULTS = {
    "detect-multiplier 3",  # bfdd's defaults
    "receive-interval 300",
    "transmit-interval 300",
    "neighbor L3LB-UPLINKS activate",  # IPv4 unicast: active by default (`bgp default ipv4-unicast`)
}


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nix
@pytest.mark.parametrize("case", UPLINK_CASES, ids=list(UPLINK_CASES))
def test_uplinks_text_is_accepted_whole_by_a_real_frr(workdir: Path, case: str) -> None:
    """frr.conf as NixOS writes it, loaded with ``vtysh -b`` into zebra, bgpd and bfdd started under FRR's
    ``traditional`` profile: no line refused (vtysh -b fails on any), every line in the running config, the
    ebgp-requires-policy default kept, and each family activated on the interface peers."""
    from l3lb.cli.frr import check_config
    from l3lb.config import parse_prefixes

    args = UPLINK_CASES[case]
    text = frr_snippet(args["prefixes"], 65101, args.get("classes", 0), args.get("pools"), args["uplinks"])
    bfd = args["uplinks"].get("bfd", {}).get("enable", True)
    assert ("bfd profile L3LB-UPLINKS" in text) == bfd
    with NetNS(workdir) as ns:
        frr = Frr(ns, workdir / f"frr-uplinks-{list(UPLINK_CASES).index(case)}")
        frr.start_integrated(nixos_frr_conf("t", text), bfdd=bfd)
        running = frr.vtysh("show running-config")
        peers = frr.vtysh_json("show bgp neighbors json")
    assert "frr defaults traditional" in running and "ebgp-requires-policy" not in running
    for line in text.splitlines():
        if line.strip() and not line.startswith("!") and line.strip() not in FRR_DEFAULTS:
            assert line.strip() in running, line
    names = tuple(f"l3lbw{w}" for w in range(1, args.get("classes", 0) + 1))
    assert check_config(running, parse_prefixes(args["prefixes"]), names) == []
    v6 = any(":" in p for p in args["prefixes"])
    for interface in args["uplinks"]["interfaces"]:
        families = peers[interface]["addressFamilyInfo"]
        assert peers[interface]["peerGroup"] == "L3LB-UPLINKS"
        assert "ipv4Unicast" in families and ("ipv6Unicast" in families) == v6, families
        for name, info in families.items():
            assert info["inboundPathPolicyConfig"] and info["outboundPathPolicyConfig"], (name, info)
        hold = args["uplinks"].get("timers", {}).get("hold", 9)
        assert peers[interface]["bgpTimerConfiguredHoldTimeMsecs"] == hold * 1000


@pytest.mark.nix
def test_without_uplinks_the_output_is_unchanged() -> None:
    """``uplinks = null`` is the same as no ``uplinks``: the redistribution alone, no session of any kind."""
    plain = frr_snippet(["10.0.100.0/24", "fd00:100::/64"], 65101, 2)
    args = 'prefixes = [ "10.0.100.0/24" "fd00:100::/64" ]; asn = 65101; classes = 2; drain = true; '
    args += "uplinks = null;"
    assert nix_eval(f"import ./nixos/frr.nix {{ {args} }}") == plain
    assert "UPLINKS" not in plain and "neighbor" not in plain and "bfd" not in plain


@pytest.mark.nix
@pytest.mark.parametrize(
    ("uplinks", "message"),
    [
        ({"interfaces": []}, "interfaces must be a non-empty list"),
        ({"interfaces": ["eth1"], "accept": "some"}, 'accept must be "all", "default" or "none"'),
        ({"interfaces": ["eth1"], "remoteAs": "peer"}, 'remoteAs must be "external", "internal" or an AS'),
    ],
)
def test_a_wrong_uplinks_argument_says_what_is_wrong(uplinks: dict, message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        frr_snippet(["10.0.100.0/24"], 65101, uplinks=uplinks)
    assert message in err.value.stderr


# ---- the lab with nothing but the rendered text on its nodes
@pytest.fixture(scope="module")
def uplinks_lab() -> Iterator[Lab]:
    """Two nodes on the rendered defaults (BFD 100 ms x 3, graceful restart with a 15 s restart time to
    keep the test short), a router with BFD, an L2 switch between them, no Kubernetes."""
    with Lab(
        2,
        uplinks={"gracefulRestart": {"restartTime": 15}},
        router_bfd=True,
        switch=True,
        cluster=False,
        log=lambda _: None,
    ) as lab:
        yield lab


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nix
def test_only_host_routes_inside_the_prefix_reach_the_router(uplinks_lab: Lab) -> None:
    """With ebgp-requires-policy at its default on the node: a /32 and a /128 inside the prefixes reach the
    router; a /32 and a /128 outside, and a /26 inside, do not. The node takes the router's routes in (accept
    "all") but not another node's Service IP, so it can never pass one on."""
    lab = uplinks_lab
    node = lab.node("node1")
    running = node.frr.vtysh("show running-config")
    assert "frr defaults traditional" in running and "ebgp-requires-policy" not in running
    inside, outside = ["10.0.100.77/32", "fd00:100::77/128"], ["10.0.201.1/32", "2001:db8:99::1/128"]
    start = time.monotonic()
    try:
        for cidr in [*inside, *outside, "10.0.100.128/26"]:
            node.ns.run(["ip", "addr", "add", cidr, "dev", "lo"])
        for cidr in inside:
            lab.routes.wait_for(cidr.split("/")[0], {"node1"}, start)
        time.sleep(1)
        routes = router_routes(lab)
        assert {"10.0.100.77", "fd00:100::77"} <= routes
        assert not {"10.0.201.1", "2001:db8:99::1", "10.0.100.128/26"} & routes, routes
        assert node.frr.vtysh_json("show ip route 192.0.2.0/24 json"), "the router's routes come in"
        # The router sends node1's Service IP to node2 too (its own filter let it through): node2 drops it.
        lab.router_frr.vtysh(
            "configure terminal",
            "ip prefix-list TO-NODES seq 20 permit 10.0.100.0/24 ge 32",
            "end",
            "clear bgp * soft out",
        )
        other = lab.node("node2")
        wait_for(
            lambda: (
                "10.0.100.77/32"
                in lab.router_frr.vtysh("show bgp ipv4 unicast neighbors eth-n2 advertised-routes")
            ),
            what="the router advertising node1's /32 to node2",
        )
        time.sleep(1)
        assert other.frr.vtysh_json("show bgp ipv4 unicast 10.0.100.77/32 json").get("paths", []) == []
    finally:
        lab.router_frr.vtysh(
            "configure terminal", "no ip prefix-list TO-NODES seq 20", "end", "clear bgp * soft out"
        )
        for cidr in [*inside, *outside, "10.0.100.128/26"]:
            node.ns.run(["ip", "addr", "del", cidr, "dev", "lo"], check=False)


def router_routes(lab: Lab) -> set[str]:
    out = set()
    for family in ("-4", "-6"):
        for r in json.loads(ip("-j", "-n", lab.router.name, family, "route").stdout or "[]"):
            out.add(r["dst"])
    return out


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nix
@pytest.mark.parametrize("fault", [LINK_DOWN, FRR_HUNG], ids=lambda f: f.name)
def test_bfd_takes_a_failed_node_out_of_the_multipath_within_a_second(uplinks_lab: Lab, fault: Fault) -> None:
    """Two nodes hold the Service IPs (ECMP at the router); one fails silently (its link goes down behind
    the switch; or its FRR hangs): BFD takes it out of the router's multipath in well under a second (the
    BGP hold time, 9 s, is what it takes without BFD: ``python tests/lab/test_uplinks.py``)."""
    hold(uplinks_lab, "node1", "node2")
    times = trials(uplinks_lab, fault, 3)
    print(f"\nBFD 100 ms x 3, {fault.what}: router drops the node after {figure(times)}")
    assert max(times) < 1.0, times


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nix
def test_graceful_restart_keeps_the_route_while_bgpd_restarts(uplinks_lab: Lab) -> None:
    """bgpd alone SIGKILLed on a node and started again 2 s later: the router keeps the node's routes (and
    forwards on them) through the restart, until the new session is up (without graceful restart they go at
    once: ``python tests/lab/test_uplinks.py``). On FRR 8.4 a BFD flap follows as the session comes up: the
    restarted bgpd registered the BFD session before it knew its source address and re-registers it with
    one, which the router sees as BFD down and answers with a hard reset; the node's routes are back with
    the next session, about 2 s later. Measured and printed, and the flap, if any, must be that one."""
    hold(uplinks_lab, "node1", "node2")
    r = bgpd_restart(uplinks_lab)
    changes = [(round(t, 3), sorted(n)) for t, n in r.changes]
    print(
        f"\nbgpd killed, started again after {r.restarted:.2f} s; the router's route to {VIP} changed at "
        f"{changes or 'no time'} (s after the kill), sessions dropped {r.dropped}: node2 missing "
        f"{r.missing():.2f} s"
    )
    assert not changes or changes[0][0] > r.restarted + 0.5, "the route went before the new session came up"
    assert r.dropped >= 1, "bgpd's session was not restarted"
    # The flap (FRR 8.4 re-keys the BFD session; once in most runs, twice in some under load): gone for a
    # reconnection or two, then back for good.
    if changes:
        assert changes[-1][1] == ["node1", "node2"], changes
        assert r.missing() < 5, changes


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nix
def test_frr_killed_keeps_the_routes_for_the_restart_time(uplinks_lab: Lab) -> None:
    """All of FRR SIGKILLed on a node: the kernel closes bgpd's TCP session before BFD notices, so the
    router enters graceful restart and keeps the node's routes for the node's restart-time (15 s here, 30
    by default) if FRR does not come back; then drops them."""
    lab = uplinks_lab
    hold(lab, "node1", "node2")
    gone = failover(lab, FRR_KILLED)
    print(f"\nFRR SIGKILLed (graceful restart, restart-time 15 s): router drops the node after {gone:.2f} s")
    assert 14.5 < gone < 17, gone


# ---- figures: every case, medians
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    def row(label: str, what: str, times: list[float]) -> None:
        rows.append((label, what, figure(times)))
        print(f"{label:<34} {what:<52} {rows[-1][2]}", flush=True)

    def lab(uplinks: dict, router_bfd: bool, switch: bool = True) -> Lab:
        return Lab(
            2, uplinks=uplinks, router_bfd=router_bfd, switch=switch, cluster=False, log=lambda _: None
        )

    bfd, no_bfd = {}, {"bfd": {"enable": False}}
    for label, uplinks, router_bfd in [
        ("BFD, graceful restart", bfd, True),
        ("no BFD, no GR", no_bfd, False),
    ]:
        with lab(uplinks, router_bfd) as up:
            hold(up, "node1", "node2")
            for fault in (LINK_DOWN, FRR_HUNG, FRR_KILLED):
                n = 1 if fault is FRR_KILLED and uplinks is bfd else args.trials
                row(label, f"{fault.what} (behind a switch)", trials(up, fault, n))
    # A direct link: the router loses carrier. FRR 8.4 as the router then resolves the node's link-local
    # next hop over another interface and does not use its routes again: a fresh lab for each trial.
    for label, uplinks, router_bfd in [
        ("BFD, graceful restart", bfd, True),
        ("no BFD, no GR", no_bfd, False),
    ]:
        times = []
        for _ in range(args.trials):
            with lab(uplinks, router_bfd, switch=False) as up:
                hold(up, "node1", "node2")
                times.append(failover(up, LINK_DOWN, repair=False))
        row(label, f"{LINK_DOWN.what} (direct link)", times)
    for label, uplinks, router_bfd in [
        ("BFD, graceful restart", bfd, True),
        ("BFD, no GR", {"gracefulRestart": {"enable": False}}, True),
        ("no BFD, GR", {"bfd": {"enable": False}, "gracefulRestart": {"enable": True}}, False),
    ]:
        with lab(uplinks, router_bfd) as up:
            hold(up, "node1", "node2")
            restarts = [bgpd_restart(up) for _ in range(args.trials)]
        row(label, "bgpd killed, back 2 s later: route missing for", [r.missing() for r in restarts])
    print()
    for r in rows:
        print(f"| {' | '.join(r)} |")


if __name__ == "__main__":
    main()
