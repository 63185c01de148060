"""Where each IP goes: an announced one on the agent's interface, or with weighted anycast on the interface of
its weight class; a draining one on the drain interface; one held down nowhere yet. What ``plan()`` brings
the interfaces to."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from ..config import DRAIN_INTERFACE, Config
from .presence import Done, Presence
from .timers import Timers
from .tracker import Tracker

WEIGHT_HOLD = 5.0
"""Seconds an IP stays in its weight class after a move before it may move again."""


class Placement(Mapping[str, str]):
    """The IPs out now and the interface of each: those announced (``tracker.announced``) whose hold-down
    is over, and those draining (``timers.draining``). A move between classes waits until WEIGHT_HOLD
    seconds after the IP's last move, since every change of weights moves flows at the router; the full
    sync that comes next after that makes it."""

    def __init__(
        self,
        config: Config,
        tracker: Tracker,
        presence: Presence,
        timers: Timers,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.presence = presence
        self.timers = timers
        self.clock = clock
        self.moved: dict[str, float] = {}
        """When each IP last moved between weight classes, for WEIGHT_HOLD (pruned at full syncs)."""

    def __getitem__(self, ip: str) -> str:
        if ip in self.tracker.announced and ip not in self.timers.pending:
            return self.interface_for(ip)
        if ip in self.timers.draining:
            return DRAIN_INTERFACE
        raise KeyError(ip)

    def __iter__(self) -> Iterator[str]:
        return iter(self.desired())

    def __len__(self) -> int:
        return len(self.desired())

    def desired(self) -> dict[str, str]:
        """Every IP out now and its interface, as a plain dict: a full plan looks each one up, and a dict
        does that several times faster than the mapping."""
        announced = self.tracker.announced
        if self.timers.pending:
            announced = announced - self.timers.pending.keys()
        if not self.config.weight_classes:
            out = dict.fromkeys(announced, self.config.interface)
        else:
            out = {ip: self.interface_for(ip) for ip in announced}
        for ip in self.timers.draining.keys() - out.keys():
            out[ip] = DRAIN_INTERFACE
        return out

    def interface_for(self, ip: str) -> str:
        """Cluster IPs (weight 0) stay on the agent's interface; a Local Service's IP goes to the class of
        its local ready endpoints, capped at the number of classes."""
        if not self.config.weight_classes:
            return self.config.interface
        weight = self.tracker.weights.get(ip, 0)
        want = self.config.interface if not weight else self.config.class_interface(weight)
        have = self.presence.present.get(ip)
        if (
            have is not None
            and have.interface != want
            and self.config.interface not in (have.interface, want)
            and have.interface != DRAIN_INTERFACE
            and self.clock() - self.moved.get(ip, -WEIGHT_HOLD) < WEIGHT_HOLD
        ):
            return have.interface
        return want

    def record(self, done: Iterable[Done]) -> None:
        for d in done:
            if d.kind == "move" and not d.refused:
                self.moved[d.ip] = self.clock()

    def prune(self) -> None:
        """Forgets the moves older than WEIGHT_HOLD: they no longer hold anything back."""
        now = self.clock()
        self.moved = {ip: t for ip, t in self.moved.items() if now - t < WEIGHT_HOLD}
