"""The leader's allocator: runs ``allocate()`` over the Services we hold, writes the status that differs,
reports conflicts once per change, and stops fighting another controller that keeps rewriting a status."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from .allocate import allocate
from .config import Config, Network
from .metrics import Metrics
from .model import Key, Service, fmt_key

log = logging.getLogger(__name__)

IN_FLIGHT_FOR = 30.0
FIGHT_WINDOW = 300.0
FIGHTS_TO_YIELD = 3
YIELD_FOR = 600.0
STATUS_CONFLICT = "StatusConflict"


class Allocator:
    def __init__(
        self,
        config: Config,
        reserved: tuple[Network, ...],
        writer,
        metrics: Metrics,  # type: ignore[no-untyped-def]
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.reserved = reserved
        self.writer = writer
        self.metrics = metrics
        self.clock = clock
        self._written: dict[Key, tuple[tuple[str, ...], float]] = {}
        self._fights: dict[Key, list[float]] = {}
        self._yielded: dict[Key, float] = {}
        self._reported: dict[Key, tuple[str, ...]] = {}
        self._in_flight: set[Key] = set()
        """Keys whose last write the watch has not shown yet."""

    def observe(self, svc: Service) -> None:
        """Follows our writes landing, and notices a status that is neither what we wrote nor empty, soon
        after we wrote it: a fight."""
        written = self._written.get(svc.key)
        if written is None:
            return
        if svc.ingress_ips == written[0]:
            self._in_flight.discard(svc.key)
            return
        if not svc.ingress_ips:
            return
        self._in_flight.discard(svc.key)  # overwritten: the next run decides again
        now = self.clock()
        if now - written[1] > FIGHT_WINDOW:
            return
        fights = [t for t in self._fights.get(svc.key, []) if now - t < FIGHT_WINDOW] + [now]
        self._fights[svc.key] = fights
        if len(fights) >= FIGHTS_TO_YIELD and svc.key not in self._yielded:
            self._yielded[svc.key] = now
            message = (
                f"another controller keeps rewriting status.loadBalancer.ingress (now "
                f"{', '.join(svc.ingress_ips)}, we wrote {', '.join(written[0]) or 'nothing'}); l3lb stops "
                f"writing it for {YIELD_FOR / 60:.0f} minutes. Is k3s ServiceLB or another load balancer "
                "active? Disable it or give the Service a loadBalancerClass"
            )
            self._report(svc, STATUS_CONFLICT, message)

    def run(self, services: Mapping[Key, Service]) -> None:
        now = self.clock()
        self._yielded = {k: t for k, t in self._yielded.items() if now - t < YIELD_FOR}
        # Our own writes count as the status until the watch shows them (or they are too old to trust):
        # without that, a second run before they land could hand the same address to another Service.
        view = {}
        for key, svc in services.items():
            written = self._written.get(key)
            if (
                written is not None
                and key in self._in_flight
                and written[0] != svc.ingress_ips
                and now - written[1] < IN_FLIGHT_FOR
            ):
                svc = dataclasses.replace(svc, ingress_ips=written[0])
            view[key] = svc
        result = allocate(view.values(), self.config.prefixes, self.reserved)
        for key, ips in result.ips.items():
            svc = view[key]
            if ips == svc.ingress_ips or key in self._yielded:
                continue
            self.writer.status(key, ips)
            self._written[key] = (ips, now)
            self._in_flight.add(key)
            if ips:
                self.metrics.allocations.inc()
                log.info("allocating %s to %s", ", ".join(ips), fmt_key(key))
                self.writer.event(key, svc.uid, "Normal", "Allocated", f"allocated {', '.join(ips)}")
        by_key: dict[Key, list[tuple[str, str]]] = {}
        for c in result.conflicts:
            by_key.setdefault(c.key, []).append((c.reason, c.message))
        for key, items in by_key.items():
            signature = tuple(m for _, m in items)
            if self._reported.get(key) != signature:
                self._reported[key] = signature
                for reason, message in items:
                    self._report(services[key], reason, message)
        for key in list(self._reported):
            if key not in by_key:
                del self._reported[key]
        for gone in self._written.keys() - services.keys():
            del self._written[gone]
            self._in_flight.discard(gone)

    def _report(self, svc: Service, reason: str, message: str) -> None:
        log.warning("%s: %s: %s", fmt_key(svc.key), reason, message)
        self.metrics.conflicts.labels(reason).inc()
        self.writer.event(svc.key, svc.uid, "Warning", reason, message)
