"""``make demo``: l3lb's whole path on one machine, narrated.

Builds what is missing, brings up the lab (a real control plane, three nodes each with FRR and an l3lb
agent, a router peering BGP unnumbered with them, a client behind it), walks through what operators care
about, prints a table of what the router and the client saw, and tears everything down. Needs root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

LIFETIME = 8
DRAIN = 5


def main() -> int:
    if os.geteuid() != 0:
        print(
            "make demo needs root: it creates network namespaces and runs FRR in them. "
            "Run it as root (sudo make demo).",
            file=sys.stderr,
        )
        return 2
    from testenv import interrupt_on_sigterm

    interrupt_on_sigterm()
    start = time.monotonic()
    # Everything the demo and its processes write goes into one scratch folder, removed at the end.
    scratch = Path(tempfile.mkdtemp(prefix="l3lb-demo-"))
    scratch.chmod(0o755)  # FRR runs as user frr and must reach the lab's folders inside
    tempfile.tempdir = os.environ["TMPDIR"] = str(scratch)
    before = machine_state(scratch)
    try:
        rows = walk_through() + weighted_anycast()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    header = ("event", "nodes announcing", "router next hops", "client (20 flows)", "convergence ms")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    took = time.monotonic() - start
    left = machine_state(scratch) - before
    if left:
        print(f"\nDone in {took:.0f}s, but these were left behind: {', '.join(sorted(left))}")
        return 1
    print(f"\nDone in {took:.0f}s; nothing left behind (network namespaces, processes, /tmp).")
    return 0


def walk_through() -> list[tuple[str, str, str, str, str]]:
    """The scenarios on the lab; one row per step for the table."""
    from lab import VIP, VIP6, Lab
    from testenv import binaries

    binaries()  # already built by make demo's set-up; this builds them when demo.py is run directly
    rows: list[tuple[str, str, str, str, str]] = []
    with Lab(3, address_lifetime=LIFETIME, drain_seconds=DRAIN, log=lambda m: say("  " + m)) as lab:

        def step(
            title: str,
            action: Callable[[], object],
            expect: set[str],
            timeout: float = 30.0,
            handled: tuple[str, str] | None = None,
        ) -> None:
            """``handled``: (node, message) for a step that must change nothing at the router: once that
            node's agent has acted on the message, the route must still go to ``expect``."""
            say(title)
            mark = len(lab.node(handled[0]).agent_log()) if handled else 0
            t0 = time.monotonic()
            action()
            if handled:
                lab.wait_handled(*handled, since=mark)
                time.sleep(0.5)  # longer than a withdrawal takes to reach the router
                assert lab.router_nexthops() == expect, lab.router_nexthops()
                ms, said = "-", "no change at the router"
            else:
                ms = f"{(lab.routes.wait_for(VIP, expect, t0, timeout=timeout) - t0) * 1000:.0f}"
                said = f"converged in {ms} ms"
            hops = ", ".join(sorted(lab.router_nexthops())) or "none"
            served = lab.curl(flows=20)
            result = " ".join(f"{k}x{v}" for k, v in sorted(served.items())) if served else "-"
            if not expect:
                result = "no route" if all(k.startswith("error") for k in served) else result
            rows.append((title.split(":")[0], ", ".join(lab.announcing()) or "none", hops, result, ms))
            say(f"  router next hops: {hops}; 20 client requests: {result}; {said}")

        say(
            f"A dual-stack LoadBalancer Service 'echo' asks for {VIP} and {VIP6} "
            "(externalTrafficPolicy: Local). No pod is Ready."
        )
        lab.create_service()
        time.sleep(1)
        step("ready on node1: its pod becomes Ready", lambda: lab.set_ready("node1", True), {"node1"})
        step("ready on node2: a second pod, ECMP", lambda: lab.set_ready("node2", True), {"node1", "node2"})
        lab.routes.wait_for(VIP6, {"node1", "node2"}, time.monotonic() - 5)
        served6 = lab.curl(VIP6, flows=20)
        say(
            f"  IPv6 too (the Service is dual-stack): router next hops for {VIP6}: "
            f"{', '.join(sorted(lab.router_nexthops(VIP6)))}; 20 client requests over IPv6: "
            + " ".join(f"{k}x{v}" for k, v in sorted(served6.items()))
        )
        step("not ready on node1: readiness fails there", lambda: lab.set_ready("node1", False), {"node2"})
        lab.set_ready("node1", True)
        lab.set_ready("node3", True)
        lab.routes.wait_for(VIP, {"node1", "node2", "node3"}, time.monotonic() - 1)
        say("  (pods on node1 and node3 Ready too: three next hops)")
        every = {"node1", "node2", "node3"}
        step(
            "cordon node3: kubectl cordon stops new pods, not traffic (Kubernetes' own load balancers since "
            "1.19)",
            lambda: lab.cordon("node3"),
            every,
            handled=("node3", "node SET node3"),
        )
        step(
            "drain node3: kubectl annotate node node3 l3lb.io/drain=true: GRACEFUL_SHUTDOWN, the router "
            "sets LOCAL_PREF 0",
            lambda: lab.drain("node3"),
            {"node1", "node2"},
        )
        paths = lab.router_paths()
        assert lab.held("node3") == {"l3lbdrain"}, lab.held("node3")
        say(
            f"  node3 still advertises {VIP}, from l3lbdrain with {paths['node3']['community']} (LOCAL_PREF "
            f"{paths['node3']['localpref']} at the router), for {DRAIN} s; then it withdraws"
        )
        time.sleep(DRAIN + 1)
        say(f"  after {DRAIN + 1} s: node3 holds it on {', '.join(sorted(lab.held('node3'))) or 'nothing'}")
        step(
            "undrain node3: kubectl annotate node node3 l3lb.io/drain-",
            lambda: (lab.drain("node3", False), lab.cordon("node3", False)),
            every,
        )
        step(
            f"SIGTERM node2's agent: a clean stop drains for {DRAIN} s, then withdraws",
            lambda: lab.signal_agent("node2", signal.SIGTERM),
            {"node1", "node3"},
        )
        step(
            "restart node2's agent: it comes back",
            lambda: lab.node("node2").start_agent(),
            every,
        )
        step(
            f"SIGKILL node1's agent: routes expire with the {LIFETIME}s address lifetime",
            lambda: lab.signal_agent("node1", signal.SIGKILL),
            {"node2", "node3"},
            timeout=LIFETIME + 10,
        )
        say("apiserver down: agents keep what they hold (and renew it) until it is back")
        lab.cp.stop_apiserver()
        time.sleep(LIFETIME + 2)
        hops = ", ".join(sorted(lab.router_nexthops())) or "none"
        served = lab.curl(flows=20)
        rows.append(
            (
                "apiserver down",
                ", ".join(lab.announcing()) or "none",
                hops,
                " ".join(f"{k}x{v}" for k, v in sorted(served.items())),
                "-",
            )
        )
        say(f"  after {LIFETIME + 2}s: router next hops {hops}; client {dict(served)}")
        lab.cp.restart_apiserver()
        step(
            "all pods not ready, the apiserver just back: nothing to serve (the agents reconnect within 3 s)",
            lambda: [lab.set_ready(n, False) for n in ("node1", "node2", "node3")],
            set(),
        )
        say("Tearing down...")
    return rows


def weighted_anycast() -> list[tuple[str, str, str, str, str]]:
    """Two nodes with --weighted: pods 1 and 3 give router weights 1:3 and flows in proportion, over IPv4
    and IPv6; then 2 and 2 give equal weights, timed next to FRR's floor (the same moves made by hand)."""
    from lab import VIP, VIP6, Lab
    from netns import ip

    rows: list[tuple[str, str, str, str, str]] = []
    one_three, even = {"node1": 25, "node2": 75}, {"node1": 50, "node2": 50}
    say("\nWeighted anycast: a new lab of two nodes whose agents run with --weighted (4 classes)")
    with Lab(2, weight_classes=4, agents=False, log=lambda m: say("  " + m)) as lab:
        ns = {n: lab.node(n).ns.name for n in ("node1", "node2")}
        lab.class_interfaces_by_hand()
        floor = []
        for _ in range(3):
            for node, dev in (("node1", "l3lbw1"), ("node2", "l3lbw3")):
                ip("-n", ns[node], "addr", "flush", "dev", "l3lbw2")
                ip("-n", ns[node], "addr", "replace", f"{VIP}/32", "dev", dev)
            lab.routes.wait_weights(VIP, one_three, time.monotonic() - 30)
            time.sleep(1)
            t0 = time.monotonic()
            for node, dev in (("node1", "l3lbw1"), ("node2", "l3lbw3")):
                ip("-n", ns[node], "addr", "del", f"{VIP}/32", "dev", dev)
                ip("-n", ns[node], "addr", "add", f"{VIP}/32", "dev", "l3lbw2")
            floor.append((lab.routes.wait_weights(VIP, even, t0) - t0) * 1000)
        floor_ms = sorted(floor)[1]
        say(f"  FRR's floor: {VIP} moved by hand from classes 1 and 3 to 2 and 2: median {floor_ms:.0f} ms")
        for node in ns.values():
            for w in range(1, 5):
                ip("-n", node, "addr", "flush", "dev", f"l3lbw{w}")
        lab.start_agents()
        lab.create_service()
        say("Pods: 1 Ready on node1, 3 Ready on node2")
        t0 = time.monotonic()
        lab.ready_pods("node1", 1)
        lab.ready_pods("node2", 3)
        for vip in (VIP, VIP6):
            lab.routes.wait_weights(vip, one_three, t0)
            served = lab.curl(vip, flows=200)
            weights = ", ".join(f"{n} weight {w}" for n, w in sorted(lab.routes.weights[vip].items()))
            result = " ".join(f"{k}x{v}" for k, v in sorted(served.items()))
            say(f"  router: {vip} via {weights}; 200 client flows: {result}")
            family = "IPv6" if ":" in vip else "IPv4"
            rows.append((f"weighted 1:3, {family}, 200 flows", "node1, node2", weights, result, "-"))
        time.sleep(6)  # an IP that moved class stays there at least 5 s
        say("Scale to 2 Ready pods on each node")
        t0 = time.monotonic()
        lab.ready_pods("node1", 2)
        lab.ready_pods("node2", 2)
        ms = (lab.routes.wait_weights(VIP, even, t0) - t0) * 1000
        served = lab.curl(VIP, flows=20)
        weights = ", ".join(f"{n} weight {w}" for n, w in sorted(lab.routes.weights[VIP].items()))
        result = " ".join(f"{k}x{v}" for k, v in sorted(served.items()))
        say(f"  router: {weights} after {ms:.0f} ms (FRR's floor {floor_ms:.0f} ms); 20 flows: {result}")
        rows.append(("weighted 2:2", "node1, node2", weights, result, f"{ms:.0f} (floor {floor_ms:.0f})"))
        say("Tearing down...")
    return rows


def machine_state(scratch: Path) -> set[str]:
    """What the demo could leave behind: network namespaces, entries in /tmp and in the home folder, and
    processes that run in a network namespace other than the root one or name the demo's scratch folder in
    their command line."""
    found = {
        f"netns {n.split()[0]}"
        for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if n.strip()
    }
    found |= {f"{scratch.parent}/{e}" for e in os.listdir(scratch.parent)} - {str(scratch)}
    found |= {f"~/{e}" for e in os.listdir(Path.home())}
    root_ns = os.readlink("/proc/self/ns/net")  # the demo runs in the root network namespace
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if int(pid) != os.getpid() and (
                os.readlink(f"/proc/{pid}/ns/net") != root_ns or str(scratch) in cmd
            ):
                found.add(f"process {pid} ({cmd[:60]})")
        except OSError:
            continue
    return found


def say(msg: str) -> None:
    print(msg, flush=True)


if __name__ == "__main__":
    sys.exit(main())
