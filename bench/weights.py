"""Convergence of a weight change (weighted anycast): from a pod's Ready condition patched in the API to
the router's kernel route with the new next-hop weights, next to FRR's own floor measured in the same run
(the address moved by hand from one weight-class interface to another, delete first).

Two nodes: node2 has 3 ready pods throughout; node1 goes from 1 to 2 and back (weights 25:75 -> 40:60 ->
25:75). The agents hold an IP in its class for 5 s after a move, so trials are 6 s apart. Run as root::

    .venv/bin/python bench/weights.py [--trials 20] [--out bench/results/weights.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

from lab import VIP, Lab  # noqa: E402
from netns import ip  # noqa: E402
from stats import pct  # noqa: E402
from testenv import interrupt_on_sigterm  # noqa: E402

UP, DOWN = {"node1": 40, "node2": 60}, {"node1": 25, "node2": 75}


def trials(lab: Lab, n: int, up: Callable[[], object], down: Callable[[], object]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"weight up": [], "weight down": []}
    for _ in range(n):
        for event, action, want in (("weight up", up, UP), ("weight down", down, DOWN)):
            t0 = time.monotonic()
            action()
            out[event].append((lab.routes.wait_weights(VIP, want, t0) - t0) * 1000)
            time.sleep(6)  # past the agents' hold-down of a moved IP
    return out


def add_first(lab: Lab, node: str, frm: str, to: str, want: dict[str, int]) -> str:
    """Moves the VIP on ``node`` in the other order (add on ``to``, then delete from ``frm``) and says what
    the router made of it after 3 s."""
    ns = lab.node(node).ns.name
    ip("-n", ns, "addr", "add", f"{VIP}/32", "dev", to)
    ip("-n", ns, "addr", "del", f"{VIP}/32", "dev", frm)
    time.sleep(3)
    got = lab.routes.weights.get(VIP)
    return f"router weights {got}" + ("" if got == want else f", expected {want}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "weights.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/weights.py needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {}
    with Lab(2, weight_classes=4, agents=False, log=print) as lab:
        n1, n2 = lab.node("node1").ns.name, lab.node("node2").ns.name
        lab.class_interfaces_by_hand()
        t0 = time.monotonic()
        ip("-n", n1, "addr", "add", f"{VIP}/32", "dev", "l3lbw1")
        ip("-n", n2, "addr", "add", f"{VIP}/32", "dev", "l3lbw3")
        lab.routes.wait_weights(VIP, DOWN, t0)

        def move(frm: str, to: str) -> Callable[[], None]:
            def go() -> None:
                ip("-n", n1, "addr", "del", f"{VIP}/32", "dev", frm)
                ip("-n", n1, "addr", "add", f"{VIP}/32", "dev", to)

            return go

        print(f"FRR floor: {args.trials} moves each way of node1's address by hand, delete first")
        results["floor"] = trials(lab, args.trials, move("l3lbw1", "l3lbw2"), move("l3lbw2", "l3lbw1"))
        print("the other order, add first, once each way:")
        other = [
            add_first(lab, "node1", "l3lbw1", "l3lbw2", UP),
            add_first(lab, "node1", "l3lbw2", "l3lbw1", DOWN),
        ]
        for line in other:
            print(f"  {line}")
        for ns in (n1, n2):
            for w in range(1, 5):
                ip("-n", ns, "addr", "flush", "dev", f"l3lbw{w}")
        t0 = time.monotonic()
        lab.start_agents()
        lab.create_service()
        lab.ready_pods("node1", 1)
        lab.ready_pods("node2", 3)
        lab.routes.wait_weights(VIP, DOWN, t0)
        time.sleep(6)
        print(f"l3lb: {args.trials} changes each way of node1's ready pods (1 <-> 2), patched in the API")
        results["l3lb"] = trials(
            lab, args.trials, lambda: lab.ready_pods("node1", 2), lambda: lab.ready_pods("node1", 1)
        )
    summary = {}
    print(f"\n{'event':14s}{'floor p50':>11s}{'floor p99':>11s}{'l3lb p50':>11s}{'l3lb p99':>11s}")
    for event in ("weight up", "weight down"):
        f, lb = results["floor"][event], results["l3lb"][event]
        row = {
            "floor_p50": pct(f, 50),
            "floor_p99": pct(f, 99),
            "l3lb_p50": pct(lb, 50),
            "l3lb_p99": pct(lb, 99),
        }
        summary[event] = {k: round(v, 1) for k, v in row.items()}
        print(f"{event:14s}" + "".join(f"{row[k]:11.1f}" for k in row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"trials": args.trials, "summary_ms": summary, "add_first": other, "samples_ms": results},
            indent=1,
        )
    )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
