"""The command line's own checks, before anything starts: what it refuses, and with which message."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from l3lb.cli.commands import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", "--node-name", "n1", "--dry-run", *args])
    return result.exit_code, result.output


def test_a_reserved_range_outside_every_prefix_is_refused() -> None:
    code, out = run("--prefix", "10.0.100.0/24", "--reserve", "10.0.101.0/30")
    assert code == 2 and "--reserve 10.0.101.0/30 is inside none of the prefixes (10.0.100.0/24)" in out


@pytest.mark.parametrize("lifetime", ["1", "2", "-5"])
def test_an_address_lifetime_under_three_seconds_is_refused(lifetime: str) -> None:
    code, out = run("--prefix", "10.0.100.0/24", "--address-lifetime", lifetime)
    assert code == 2 and "neither 0 (permanent) nor at least 3 seconds" in out, out
