"""Convergence through the whole path: from a pod's Ready condition patched in the API to the router's
kernel route, next to FRR's own floor measured in the same run (an address added on a node's lo by hand,
through netlink, until the router has the route).

Events, each over --trials trials: add (first node), ECMP add (second node), partial withdraw (first node
not ready), full withdraw (second node not ready). Route changes at the router are seen through netlink
events in its namespace. Run as root::

    .venv/bin/python bench/convergence.py [--trials 50] [--out bench/results/convergence.json]

Writes the samples and a summary as JSON and a PNG plot of the distributions beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

from lab import VIP, Lab  # noqa: E402
from netns import NetNS, enter_netns  # noqa: E402
from stats import against_floor  # noqa: E402
from testenv import interrupt_on_sigterm  # noqa: E402

EVENTS = ("add", "ECMP add", "partial withdraw", "full withdraw")


class InNetns:
    """Runs calls on a thread inside a namespace, with its own netlink socket: no process spawn per call."""

    def __init__(self, ns: NetNS) -> None:
        self.calls: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, args=(ns.name,), daemon=True).start()

    def _run(self, name: str) -> None:
        from pyroute2 import IPRoute

        enter_netns(name)
        ipr = IPRoute()
        lo = ipr.link_lookup(ifname="lo")[0]
        while True:
            op = self.calls.get()
            ipr.addr(op, index=lo, address=VIP, prefixlen=32)
            self.done.put(None)

    def addr(self, op: str) -> None:
        self.calls.put(op)
        self.done.get()


def run_trials(
    lab: Lab, trials: int, steps: list[tuple[Callable[[], object], set[str]]]
) -> list[list[float]]:
    """For each trial, runs the 4 steps in order; returns ms per event."""
    out: list[list[float]] = [[] for _ in steps]
    for _ in range(trials):
        for i, (action, expect) in enumerate(steps):
            t0 = time.monotonic()
            action()
            out[i].append((lab.routes.wait_for(VIP, expect, t0) - t0) * 1000)
        time.sleep(0.2)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    data, labels, colors = [], [], []
    for event in EVENTS:
        for source, color in (("floor", "#999999"), ("l3lb", "#1f77b4")):
            data.append(results[source][event])
            labels.append(f"{event}\n{'FRR floor' if source == 'floor' else 'l3lb'}")
            colors.append(color)
    parts = ax.boxplot(data, patch_artist=True, showfliers=True)
    for patch, color in zip(parts["boxes"], colors, strict=True):
        patch.set_facecolor(color)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("ms until the router's kernel route")
    ax.set_title(
        "Pod Ready patched in the API -> route at the router (l3lb) vs. address on lo -> route (FRR)"
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "convergence.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/convergence.py needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    results: dict = {}
    with Lab(2, agents=False, log=print) as lab:
        n1, n2 = (InNetns(lab.node(n).ns) for n in ("node1", "node2"))
        print(f"FRR floor: {args.trials} trials of an address added/removed on lo by hand")
        floor = run_trials(
            lab,
            args.trials,
            [
                (lambda: n1.addr("add"), {"node1"}),
                (lambda: n2.addr("add"), {"node1", "node2"}),
                (lambda: n1.addr("del"), {"node2"}),
                (lambda: n2.addr("del"), set()),
            ],
        )
        results["floor"] = dict(zip(EVENTS, floor, strict=True))
        lab.start_agents()
        lab.create_service()
        lab.set_ready("node1", False)
        lab.set_ready("node2", False)
        time.sleep(2)
        print(f"l3lb: {args.trials} trials of a pod's Ready condition patched in the API")
        l3lb = run_trials(
            lab,
            args.trials,
            [
                (lambda: lab.set_ready("node1", True), {"node1"}),
                (lambda: lab.set_ready("node2", True), {"node1", "node2"}),
                (lambda: lab.set_ready("node1", False), {"node2"}),
                (lambda: lab.set_ready("node2", False), set()),
            ],
        )
        results["l3lb"] = dict(zip(EVENTS, l3lb, strict=True))
    summary = {}
    heads = ("floor p50", "floor p99", "l3lb p50", "l3lb p99")
    print(f"\n{'event':18s}" + "".join(f"{h:>10s}" for h in heads) + f"{'added p50':>11s}")
    for event in EVENTS:
        row = against_floor(results["floor"][event], results["l3lb"][event])
        summary[event] = {k: round(v, 1) for k, v in row.items()}
        print(
            f"{event:18s}"
            + "".join(f"{row[k]:10.1f}" for k in ("floor_p50", "floor_p99", "l3lb_p50", "l3lb_p99"))
            + f"{row['added_p50']:11.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"trials": args.trials, "summary_ms": summary, "samples_ms": results}, indent=1)
    )
    png = args.out.with_suffix(".png")
    plot(results, png)
    print(f"\nwritten: {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
