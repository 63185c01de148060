"""The chaos soak (tests/support/soak.py) in make test: a minute with a fixed seed, then one with a fresh
random seed, printed so that a failure can be replayed with ``bench/soak.py --seed N``."""

from __future__ import annotations

import random

import pytest
from soak import SEEDS, run_soak

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]


@pytest.mark.parametrize("seed", [1, random.randrange(1 << 31)], ids=["fixed-seed", "random-seed"])
def test_soak_keeps_every_invariant(seed: int, request: pytest.FixtureRequest) -> None:
    report = run_soak(seed, 60, log=lambda _: None)
    request.config.stash.setdefault(SEEDS, []).append(report.table())
    assert report.violations == [], f"seed {seed}:\n" + "\n".join(report.violations + report.log[-80:])
    assert sum(report.faults.values()) >= 40 and len(report.faults) >= 12, report.faults
