"""The chaos soak (tests/support/soak.py) for minutes: the FRR lab under a seeded random schedule of faults,
with invariants I1-I4 checked from outside the agents. Run as root::

    .venv/bin/python bench/soak.py [--minutes 10] [--seed N] [--out bench/results/soak.json]

Prints a table (faults by kind, checks, violations, time to converge per kind) and writes the results with
the event log. A violation prints the seed and the log that reproduces it, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

from soak import run_soak  # noqa: E402
from testenv import interrupt_on_sigterm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh random seed, printed")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/soak.py needs root (network namespaces)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"soak: seed {seed}, {args.minutes:g} minutes, {args.nodes} nodes", flush=True)
    report = run_soak(seed, args.minutes * 60, nodes=args.nodes, log=lambda m: print(m, flush=True))
    print()
    print(report.table())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report.as_json(), "log": report.log}, indent=2) + "\n")
    print(f"written to {args.out}")
    if report.violations:
        print(f"\n{len(report.violations)} violations; reproduce with --seed {seed}:", file=sys.stderr)
        print("\n".join(report.violations), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
