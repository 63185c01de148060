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
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kubelet import create_pod, set_pod_ready  # noqa: E402
from kubernetes import client  # noqa: E402
from lab import APP, HTTP_PORT, NAMESPACE, VIP, Lab  # noqa: E402
from netns import ip  # noqa: E402
from testenv import interrupt_on_sigterm  # noqa: E402

UP, DOWN = {"node1": 40, "node2": 60}, {"node1": 25, "node2": 75}


def wait_weights(lab: Lab, want: dict[str, int], after: float, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [t for t, dst, w in lab.routes.weight_changes if dst == VIP and t >= after and w == want]
        if got:
            return got[0]
        time.sleep(0.005)
    raise SystemExit(f"router weights {lab.routes.weights.get(VIP)}, expected {want}")


def pods(lab: Lab, node: str, n: int) -> None:
    index = lab.node(node).index
    for k in range(4):
        name = f"echo-{node}-{k}"
        try:
            set_pod_ready(lab.core, NAMESPACE, name, k < n)
        except client.ApiException as err:
            if err.status != 404:
                raise
            ips = f"10.244.{index}.{20 + k},fd00:244:{index}::{20 + k}"
            create_pod(lab.core, NAMESPACE, name, node, ips, labels=APP, ready=k < n, port=HTTP_PORT)


def trials(lab: Lab, n: int, up: Callable[[], object], down: Callable[[], object]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"weight up": [], "weight down": []}
    for _ in range(n):
        for event, action, want in (("weight up", up, UP), ("weight down", down, DOWN)):
            t0 = time.monotonic()
            action()
            out[event].append((wait_weights(lab, want, t0) - t0) * 1000)
            time.sleep(6)  # past the agents' hold-down of a moved IP
    return out


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


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
        for ns in (n1, n2):  # the class interfaces the agents would make (no dummy driver here)
            for w in range(1, 5):
                ip("-n", ns, "link", "add", f"l3lbw{w}", "type", "veth", "peer", "name", f"l3lbw{w}p")
                ip("-n", ns, "link", "set", f"l3lbw{w}", "up")
                ip("-n", ns, "link", "set", f"l3lbw{w}p", "up")
        t0 = time.monotonic()
        ip("-n", n1, "addr", "add", f"{VIP}/32", "dev", "l3lbw1")
        ip("-n", n2, "addr", "add", f"{VIP}/32", "dev", "l3lbw3")
        wait_weights(lab, DOWN, t0)

        def move(frm: str, to: str) -> Callable[[], None]:
            def go() -> None:
                ip("-n", n1, "addr", "del", f"{VIP}/32", "dev", frm)
                ip("-n", n1, "addr", "add", f"{VIP}/32", "dev", to)

            return go

        print(f"FRR floor: {args.trials} moves each way of node1's address by hand")
        results["floor"] = trials(lab, args.trials, move("l3lbw1", "l3lbw2"), move("l3lbw2", "l3lbw1"))
        for ns in (n1, n2):
            for w in range(1, 5):
                ip("-n", ns, "addr", "flush", "dev", f"l3lbw{w}")
        t0 = time.monotonic()
        lab.start_agents()
        lab.create_service()
        pods(lab, "node1", 1)
        pods(lab, "node2", 3)
        wait_weights(lab, DOWN, t0)
        time.sleep(6)
        print(f"l3lb: {args.trials} changes each way of node1's ready pods (1 <-> 2), patched in the API")
        results["l3lb"] = trials(
            lab, args.trials, lambda: pods(lab, "node1", 2), lambda: pods(lab, "node1", 1)
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
        json.dumps({"trials": args.trials, "summary_ms": summary, "samples_ms": results}, indent=1)
    )
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
