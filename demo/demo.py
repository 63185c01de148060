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
sys.path.insert(0, str(REPO / "tests"))

LIFETIME = 8


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
        rows = walk_through()
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
    with Lab(3, address_lifetime=LIFETIME, log=lambda m: say("  " + m)) as lab:

        def step(title: str, action: Callable[[], object], expect: set[str], timeout: float = 30.0) -> None:
            say(title)
            t0 = time.monotonic()
            action()
            t = lab.routes.wait_for(VIP, expect, t0, timeout=timeout)
            ms = (t - t0) * 1000
            hops = ", ".join(sorted(lab.router_nexthops())) or "none"
            served = lab.curl(flows=20)
            result = " ".join(f"{k}x{v}" for k, v in sorted(served.items())) if served else "-"
            if not expect:
                result = "no route" if all(k.startswith("error") for k in served) else result
            rows.append(
                (title.split(":")[0], ", ".join(lab.announcing()) or "none", hops, result, f"{ms:.0f}")
            )
            say(f"  router next hops: {hops}; 20 client requests: {result}; converged in {ms:.0f} ms")

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
        step(
            "cordon node3: kubectl cordon, before any eviction",
            lambda: lab.cordon("node3"),
            {"node1", "node2"},
        )
        step(
            "SIGTERM node2's agent: a clean stop withdraws",
            lambda: lab.signal_agent("node2", signal.SIGTERM),
            {"node1"},
        )
        step(
            "restart node2's agent: it comes back",
            lambda: lab.node("node2").start_agent(),
            {"node1", "node2"},
        )
        step(
            f"SIGKILL node1's agent: routes expire with the {LIFETIME}s address lifetime",
            lambda: lab.signal_agent("node1", signal.SIGKILL),
            {"node2"},
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
            "all pods not ready: nothing to serve",
            lambda: [lab.set_ready(n, False) for n in ("node1", "node2", "node3")],
            set(),
        )
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
