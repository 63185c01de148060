"""A graceful drain at the router: from the Node annotation ``l3lb.io/drain=true`` patched in the API to the
router's multipath without that node (its path advertised with GRACEFUL_SHUTDOWN, at LOCAL_PREF 0 there),
and from the annotation's removal to the node back in it; next to FRR's own floor measured in the same run
(the address moved by hand from lo to l3lbdrain and back, delete first).

Then what a client sees, asking --rate times a second on new connections, when a node holding a Cluster IP
with another leaves: drained (GRACEFUL_SHUTDOWN, the router honours it), drained with the router deleting
the community (as a router without that policy), and withdrawn at once (the exclude label). Run as root::

    .venv/bin/python bench/drain.py [--trials 20] [--rate 200] [--out bench/results/drain.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

from kubelet import set_node_label  # noqa: E402
from lab import Lab  # noqa: E402
from netns import ip  # noqa: E402
from stats import against_floor  # noqa: E402
from testenv import interrupt_on_sigterm  # noqa: E402

WEB = "10.0.100.6"
DRAIN = 4
BOTH, ONE = {"node1", "node2"}, {"node1"}
EXCLUDE = "node.kubernetes.io/exclude-from-external-load-balancers"


def trials(lab: Lab, n: int, out: Callable[[], object], back: Callable[[], object]) -> dict[str, list[float]]:
    """ms from each action to the router's multipath without node2 ("drain") and with it again ("undrain")."""
    res: dict[str, list[float]] = {"drain": [], "undrain": []}
    for _ in range(n):
        for event, action, want in (("drain", out, ONE), ("undrain", back, BOTH)):
            t0 = time.monotonic()
            action()
            res[event].append((lab.routes.wait_for(WEB, want, t0) - t0) * 1000)
            time.sleep(0.5)
    return res


def client_during(
    lab: Lab, rate: float, leave: Callable[[], object], come_back: Callable[[], object]
) -> dict:
    """Errors of a client asking ``rate`` times a second while node2 leaves and DRAIN + 2 s after."""
    proc = lab.requests(WEB, seconds=DRAIN + 4, rate=rate)
    time.sleep(1)
    leave()
    time.sleep(DRAIN + 4)
    result = lab.requests_result(proc)
    come_back()
    lab.routes.wait_for(WEB, BOTH, time.monotonic() - 1, timeout=30)
    time.sleep(1)
    return {
        "requests": result["requests"],
        "errors": len(result["errors"]),
        "slow": len(result["slow"]),
        "first": (result["errors"] + result["slow"])[:3],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--client-trials", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "drain.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/drain.py needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {}
    clients: dict[str, list[dict]] = {"graceful": [], "no router help": [], "at once": []}
    with Lab(2, agents=False, drain_seconds=3600, log=print) as lab:
        n1, n2 = lab.node("node1").ns.name, lab.node("node2").ns.name
        for ns in (n1, n2):  # as the agent makes it where the kernel has no dummy driver
            ip("-n", ns, "link", "add", "l3lbdrain", "type", "veth", "peer", "name", "l3lbdrainp")
            ip("-n", ns, "link", "set", "l3lbdrain", "up")
            ip("-n", ns, "link", "set", "l3lbdrainp", "up")
            ip("-n", ns, "addr", "add", f"{WEB}/32", "dev", "lo")
        lab.routes.wait_for(WEB, BOTH, time.monotonic() - 1)

        def move(frm: str, to: str) -> Callable[[], None]:
            def go() -> None:
                ip("-n", n2, "addr", "del", f"{WEB}/32", "dev", frm)
                ip("-n", n2, "addr", "add", f"{WEB}/32", "dev", to)

            return go

        print(f"FRR floor: {args.trials} moves each way of node2's address by hand, lo <-> l3lbdrain")
        results["floor"] = trials(lab, args.trials, move("lo", "l3lbdrain"), move("l3lbdrain", "lo"))
        for ns in (n1, n2):
            ip("-n", ns, "addr", "del", f"{WEB}/32", "dev", "lo")
        # The drain never ends within a trial (3600 s): the annotation's removal brings the address back.
        lab.start_agents()
        lab.create_service("web", WEB, policy="Cluster")
        lab.set_ready("node1", True)
        lab.routes.wait_for(WEB, BOTH, time.monotonic() - 1, timeout=30)
        time.sleep(1)
        print(f"l3lb: {args.trials} drains and undrains of node2, annotated in the API")
        results["l3lb"] = trials(
            lab, args.trials, lambda: lab.drain("node2"), lambda: lab.drain("node2", False)
        )
        for n in lab.nodes:  # again, draining DRAIN seconds (SIGKILL: the addresses stay, and are adopted)
            lab.signal_agent(n.name, signal.SIGKILL)
            last = len(n.argv) - 1 - n.argv[::-1].index("--drain-seconds")
            n.argv[last + 1] = str(DRAIN)
            n.start_agent()
        time.sleep(3)
        print(
            f"a client at {args.rate:g} requests a second while node2 leaves, {args.client_trials} times each"
        )
        exclude = lambda on: set_node_label(lab.core, "node2", EXCLUDE, "true" if on else None)  # noqa: E731
        for _ in range(args.client_trials):
            clients["graceful"].append(
                client_during(lab, args.rate, lambda: lab.drain("node2"), lambda: lab.drain("node2", False))
            )
            lab.router_honours_graceful_shutdown(False)
            time.sleep(2)
            clients["no router help"].append(
                client_during(lab, args.rate, lambda: lab.drain("node2"), lambda: lab.drain("node2", False))
            )
            lab.router_honours_graceful_shutdown(True)
            time.sleep(2)
            clients["at once"].append(
                client_during(lab, args.rate, lambda: exclude(True), lambda: exclude(False))
            )
    summary = {}
    print(
        f"\n{'event':10s}"
        + "".join(f"{h:>11s}" for h in ("floor p50", "floor p99", "l3lb p50", "l3lb p99", "added p50"))
    )
    for event in ("drain", "undrain"):
        row = against_floor(results["floor"][event], results["l3lb"][event])
        summary[event] = {k: round(v, 1) for k, v in row.items()}
        print(f"{event:10s}" + "".join(f"{row[k]:11.1f}" for k in row))
    print(
        f"\nclient at {args.rate:g}/s while node2 leaves, per trial: failed / took over 0.5 s"
        " (a SYN sent again) / requests"
    )
    for how, runs in clients.items():
        print(f"  {how:15s} " + ", ".join(f"{r['errors']} / {r['slow']} / {r['requests']}" for r in runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "trials": args.trials,
                "summary_ms": summary,
                "samples_ms": results,
                "client": {"rate": args.rate, **clients},
            },
            indent=1,
        )
    )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
