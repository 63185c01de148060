"""The interfaces' change tracker on its own: which notifications are echoes of our own requests."""

from __future__ import annotations

from l3lb.node.presence import ECHO_WITHIN, Echoes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_echo_is_expected_per_kind_ip_and_interface_for_a_few_seconds() -> None:
    clock = Clock()
    e = Echoes(clock)
    e.expect("add", "fd00:100::5", "lo")
    assert not e.consume("add", "fd00:100::5", "l3lbw1"), "someone else's copy on another interface"
    assert not e.consume("del", "fd00:100::5", "lo"), "someone else's removal"
    assert e.consume("add", "fd00:100::5", "lo")
    assert not e.consume("add", "fd00:100::5", "lo"), "one echo per request"
    e.expect("add", "fd00:100::6", "lo")
    clock.now += ECHO_WITHIN + 1
    assert not e.consume("add", "fd00:100::6", "lo"), "too late to be ours"
    e.expect("del", "fd00:100::7", "lo")
    e.reset()
    assert not e.consume("del", "fd00:100::7", "lo"), "forgotten when the monitor starts again"
