"""What each change to the interfaces was, and why: one log line and a metric per change, an Event on the
Service for an announcement, a drain or a withdrawal, and a Warning Event when the kernel refuses an
address; the hold-downs and drains as they start and end (lines, counters, and gauges of when each ends,
which ``l3lb status`` reads); and the Node's annotations that cannot be read (a Warning Event on the Node)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ..config import CLASS_PREFIX, DRAIN_INTERFACE, Config
from ..metrics import Metrics
from ..model import Key, Node, fmt_key
from .decide import NOT_WANTED
from .presence import Done, Presence
from .timers import Timers
from .tracker import Tracker

log = logging.getLogger("l3lb.node.agent")  # its lines are the agent's

STRAY = "stray"
REPAIR = "repair"
STOPPING = "stopping"
ADDRESS_REFUSED = "AddressRefused"


class Recorder(Protocol):
    def event(
        self, key: Key, uid: str, kind: str, reason: str, message: str, involved: str = "Service"
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class Why:
    """Why an IP is (or is no longer) held: the Service that decides it, a reason token and the detail."""

    key: Key | None
    reason: str
    detail: str

    def __str__(self) -> str:
        return f" for {fmt_key(self.key)}: {self.detail}" if self.key else f": {self.detail}"


class Reporter:
    def __init__(self, config: Config, tracker: Tracker, metrics: Metrics) -> None:
        self.config = config
        self.tracker = tracker
        self.metrics = metrics
        self.events: Recorder | None = None
        """Set once the API side runs (never in dry-run)."""
        self._noted: tuple[tuple[str, str], ...] = ()
        """The Node's notes said last: each is said once, until it changes."""
        self._shown: dict[str, set[str]] = {"pending": set(), "draining": set()}
        """The IPs with a gauge of when their hold-down or drain ends."""

    def applied(self, done: Iterable[Done], presence: Presence) -> None:
        """One line per change of a sync; ``presence.held`` is still what was held before it."""
        node, m = self.config.node_name, self.metrics
        for d in done:
            if d.refused:
                self._refused(d, presence)
                continue
            if d.kind == "renew":
                continue
            self._weigh(d)
            if d.kind == "duplicate":
                m.withdrawals.labels(STRAY).inc()
                where = presence.present[d.ip].interface if d.ip in presence.present else "none"
                log.info("collecting stray %s on %s: it is held on %s", d.ip, d.interface, where)
                continue
            why = self.why(d.ip)
            if d.kind in ("add", "move") and d.interface == DRAIN_INTERFACE:
                m.drains.labels(why.reason).inc()
                seconds = self.config.drain_seconds
                log.info("draining %s%s; withdrawn in %ds unless that ends", d.ip, why, seconds)
                self._event(why, "Normal", "Draining", f"{node} drains {d.ip}: {why.detail}")
            elif d.kind == "move" and d.source == DRAIN_INTERFACE:
                m.announcements.labels(why.reason).inc()
                log.info("assuming %s%s; it was draining", d.ip, why)
                self._event(why, "Normal", "Announced", f"{node} announces {d.ip}: {why.detail}")
            elif d.kind == "move":
                m.moves.inc()
                log.info("moving %s to %s%s", d.ip, d.interface, why)
            elif d.kind == "remove" and d.interface == DRAIN_INTERFACE and why.key is not None:
                m.withdrawals.labels(why.reason).inc()
                log.info("forfeiting %s%s; it has drained", d.ip, why)
                self._event(why, "Normal", "Withdrawn", f"{node} withdrew {d.ip}: {why.detail}")
            elif d.kind == "remove" and d.ip in presence.held:
                m.withdrawals.labels(why.reason).inc()
                log.info("forfeiting %s%s", d.ip, why)
                self._event(why, "Normal", "Withdrawn", f"{node} withdrew {d.ip}: {why.detail}")
            elif d.kind == "remove":
                m.withdrawals.labels(STRAY).inc()
                log.info("collecting stray %s: no Service of ours wants it", d.ip)
            elif d.ip in presence.held:
                m.repairs.inc()
                m.announcements.labels(REPAIR).inc()
                log.warning("restoring %s%s; it was removed by someone else", d.ip, why)
            else:
                m.announcements.labels(why.reason).inc()
                log.info("assuming %s%s", d.ip, why)
                self._event(why, "Normal", "Announced", f"{node} announces {d.ip}: {why.detail}")

    def _refused(self, d: Done, presence: Presence) -> None:
        """Each refusal is a warning line; the first of a cause (its errno) a Warning Event too."""
        r = presence.refused[d.ip]
        what = "remove" if d.kind in ("remove", "duplicate") else "put"
        where = "from" if what == "remove" else "on"
        message = (
            f"{self.config.node_name} cannot {what} {d.ip} {where} {d.interface}: {os.strerror(d.errno)}; "
            f"retrying in {r.retry_at - presence.clock():.0f}s"
        )
        why = self.why(d.ip)
        log.warning("%s%s", message, f" (for {fmt_key(why.key)})" if why.key else "")
        if r.attempts == 1:
            self._event(why, "Warning", ADDRESS_REFUSED, message.rsplit(";", 1)[0])

    def timed(self, timers: Timers) -> None:
        """The hold-downs and drains that the last sync started or ended early; the gauges of when each
        running one ends (Unix time, for ``l3lb status``), kept to the IPs that have one."""
        m = self.metrics
        for t in timers.timed:
            why = self.why(t.ip)
            if t.kind == "pending":
                wait = t.at - timers.clock()
                log.info("holding %s back%s; announced in %.1fs if that lasts (hold-down)", t.ip, why, wait)
            elif t.kind == "suppressed":
                m.suppressed.inc()
                log.info("not announcing %s%s: it lasted %.1fs, less than its hold-down", t.ip, why, t.waited)
        offset = time.time() - timers.clock()
        for kind, gauge, running in (
            ("pending", m.hold_down_until, timers.pending),
            ("draining", m.drain_until, timers.draining),
        ):
            shown = self._shown[kind]
            for ip in shown - running.keys():
                gauge.remove(ip)
            for ip in running.keys() - shown:
                gauge.labels(ip).set(running[ip] + offset)
            self._shown[kind] = set(running)

    def node(self, node: Node | None) -> None:
        """What cannot be read on this node's Node (an l3lb.io/drain value, say): a warning line, a Warning
        Event on the Node and a conflicts count, once for each value."""
        notes = node.notes if node is not None else ()
        if notes == self._noted:
            return
        self._noted = notes
        for reason, message in notes:
            log.warning("node %s: %s", self.config.node_name, message)
            self.metrics.conflicts.labels(reason).inc()
            if self.events is not None:
                name = self.config.node_name
                self.events.event(("", name), name, "Warning", reason, message, "Node")

    def adopted(self, ips: Iterable[str], presence: Presence) -> None:
        for ip in sorted(ips):
            log.info("adopting %s%s; already on %s", ip, self.why(ip), presence.present[ip].interface)

    def stopping(self, done: Iterable[Done]) -> None:
        for d in done:
            if d.refused:
                log.error("could not withdraw %s from %s: %s", d.ip, d.interface, os.strerror(d.errno))
            else:
                self.metrics.withdrawals.labels(STOPPING).inc()
                log.info("withdrawing %s: the agent is stopping", d.ip)

    def why(self, ip: str) -> Why:
        t = self.tracker
        d = t.explain(ip)
        if d is not None:
            key = next((k for k in d.services if t.decisions[k].announce == d.announce), d.services[0])
            return Why(key, d.reason, d.detail)
        gone = t.released.get(ip)
        if gone is not None:
            return Why(gone, NOT_WANTED, "the Service is gone, not ours, or has another IP")
        return Why(None, STRAY, "no Service of ours wants it")

    def _weigh(self, d: Done) -> None:
        """The weight gauge of an IP: its class on a class interface, no sample elsewhere."""
        if not self.config.weight_classes:
            return
        if d.kind in ("add", "move") and d.interface.startswith(CLASS_PREFIX):
            self.metrics.weight.labels(d.ip).set(int(d.interface.removeprefix(CLASS_PREFIX)))
        elif d.kind != "duplicate":
            with contextlib.suppress(KeyError):
                self.metrics.weight.remove(d.ip)

    def _event(self, why: Why, kind: str, reason: str, message: str) -> None:
        svc = self.tracker.services.get(why.key) if why.key else None
        if self.events is not None and svc is not None:
            self.events.event(svc.key, svc.uid, kind, reason, message)
