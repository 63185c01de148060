"""The leader's allocator, in a thread of its own: it follows every LoadBalancer Service (the daemon hands it
the Service watch events, as it does the agent), and while this agent leads it runs ``assign()`` over
ours, writes the status that differs, clears status that l3lb wrote on a Service that is no longer ours,
reports conflicts once per change, and stops fighting another controller that keeps rewriting a status.

Everything it decides comes from the full state it holds, never from having seen a change live: a new
leader, or one that missed events, reaches the same result. Status writes are conditional on the
resourceVersion the decision was made on, go out only while the election says we lead, and whatever is
still queued when leadership is lost is dropped.

A status write that fails (the apiserver unreachable, 5xx, 429, or 403 before RBAC arrives) is tried again
for that Service alone after a backoff of its own (1 s doubling to 60 s); a 409 (the Service changed
since the decision) waits for the watch to bring the new version, or for that backoff, instead of writing
again at once on the same stale resourceVersion. Every RESYNC seconds the leader runs over the full state
anyway, so nothing can stay unwritten on a quiet cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..backoff import Backoff
from ..config import Config
from ..k8s.writer import CONFLICT, DENIED, FAILED, WRITTEN
from ..metrics import Metrics
from ..model import Key, Service, WatchEvent, field_manager, fmt_key, is_ours
from .assign import assign

log = logging.getLogger(__name__)

IN_FLIGHT_FOR = 30.0
FIGHT_WINDOW = 300.0
FIGHTS_TO_YIELD = 3
YIELD_FOR = 600.0
STATUS_CONFLICT = "StatusConflict"
BATCH = 0.05
"""Seconds the allocator lets events gather before a run: a burst of Services costs a few runs."""
RESYNC = 60.0
"""Seconds between runs over the full state while leading, events or not. A run over 10,000 Services
takes about 160 ms: 0.3% of a core, on the leader alone."""


class StatusWriter(Protocol):
    def write(
        self, key: Key, ips: tuple[str, ...], resource_version: str = "", take_over: bool = False
    ) -> None: ...
    def drop(self) -> None: ...


class Recorder(Protocol):
    def event(self, key: Key, uid: str, kind: str, reason: str, message: str) -> object: ...


@dataclass(frozen=True, slots=True)
class Assigned:
    """A LoadBalancer Service as the leader last saw it and, if it is ours, what the last run decided for it:
    what its conditions are written from (``Allocator.on_assigned``)."""

    svc: Service
    ours: bool
    ips: tuple[str, ...] = ()
    """What its status.loadBalancer.ingress should hold."""
    conflicts: tuple[tuple[str, str], ...] = ()
    """(reason, message) of each warning of the run about it, and StatusConflict while the leader yields."""
    writing: bool = False
    """A status write of it (an allocation, a takeover) that the watch has not shown yet."""


YIELDED = (
    f"another controller keeps rewriting status.loadBalancer.ingress; l3lb does not write it for "
    f"{YIELD_FOR / 60:.0f} minutes"
)


@dataclass(slots=True)
class Retry:
    """A Service whose last status write did not land: written again at ``at``, or as soon as the watch
    shows a resourceVersion other than the one that write was conditional on."""

    at: float
    resource_version: str
    backoff: Backoff


class Allocator:
    def __init__(
        self,
        config: Config,
        writer: StatusWriter,
        events: Recorder,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        lease_namespace: str = "kube-system",
    ) -> None:
        self.config = config
        self.field_manager = field_manager(lease_namespace)
        self.writer = writer
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.services: dict[Key, Service] = {}
        """Every LoadBalancer Service, ours or not, as last seen."""
        self.runs = 0
        self._cond = threading.Condition()
        self._pending: list[WatchEvent] = []
        self._leader = False
        self._leading = False  # what the thread acts on
        self._outcomes: list[tuple[Key, str, str]] = []
        self._retries: dict[Key, Retry] = {}
        self._resync_at = 0.0
        self._written: dict[Key, tuple[tuple[str, ...], float]] = {}
        self._fights: dict[Key, list[float]] = {}
        self._yielded: dict[Key, float] = {}
        self._reported: dict[Key, tuple[str, ...]] = {}
        self._in_flight: set[Key] = set()
        """Keys whose last write the watch has not shown yet."""
        self.on_assigned: Callable[[dict[Key, Assigned | None], bool], None] | None = None
        """While leading, told after each step the Services whose object or decision changed (None: gone
        from the watch); after the first run of a term, every Service, with True."""
        self._decided: dict[Key, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {}
        self._handed: dict[Key, Assigned] = {}

    # ---- inputs (other threads)
    def offer(self, event: WatchEvent) -> None:
        """A Service watch event (REPLACE, SET or DELETE), as the agent received it."""
        with self._cond:
            self._pending.append(event)
            self._cond.notify()

    def on_leader(self, leader: bool) -> None:
        with self._cond:
            self._leader = leader
            self._cond.notify()

    def written(self, key: Key, outcome: str, resource_version: str) -> None:
        """How a status write went (the writer's ``on_written``)."""
        with self._cond:
            self._outcomes.append((key, outcome, resource_version))
            self._cond.notify()

    # ---- the loop
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="allocator", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._cond:
                while (
                    not (self._pending or self._outcomes or self._leader != self._leading or stop.is_set())
                    and (wait := self._wait()) > 0
                ):
                    self._cond.wait(min(wait, 1.0))
                events, self._pending = self._pending, []
                outcomes, self._outcomes = self._outcomes, []
                leader = self._leader
            self.step(events, leader, outcomes)
            stop.wait(BATCH)

    def _wait(self) -> float:
        """Seconds until a retry or the resync is due, while leading."""
        if not self._leading:
            return 1.0
        due = min([self._resync_at, *(r.at for r in self._retries.values())])
        return due - self.clock()

    def step(
        self, events: list[WatchEvent], leader: bool, outcomes: Iterable[tuple[Key, str, str]] = ()
    ) -> None:
        """Records ``events`` and how writes went, follows a change of leadership, and allocates if we lead
        and anything changed, a retry is due, or the resync. The loop's body; tests call it directly."""
        changed = relisted = False
        touched: set[Key] = set()
        for e in events:
            changed |= self._record(e, leader)
            if e.kind == "REPLACE":
                relisted = True
            else:
                touched.add(e.value[0])
        now = self.clock()
        dirty = self._outcome(outcomes, now)
        if leader != self._leading:
            self._leading = leader
            if not leader:
                # A new term starts from the Services' status alone; nothing decided in this one goes out.
                self.writer.drop()
                self._written.clear()
                self._in_flight.clear()
                self._reported.clear()
                self._retries.clear()
                self._decided.clear()
                self._handed.clear()
                return
            log.info("leading the allocator: %d LoadBalancer Services", len(self.services))
            dirty = True
            self._handed.clear()
        due = any(r.at <= now for r in self._retries.values()) or now >= self._resync_at
        ran = self._leading and (changed or dirty or due)
        if ran:
            self.allocate_now()
        if self._leading and self.on_assigned is not None:
            everything = ran or relisted
            self._hand_over(self.services.keys() | self._handed.keys() if everything else touched)
        if self._leading and events and log.isEnabledFor(logging.DEBUG):
            log.debug("handled %s", "; ".join(map(str, events[:20])))

    def _outcome(self, outcomes: Iterable[tuple[Key, str, str]], now: float) -> bool:
        """Follows how writes went; True when one calls for deciding again."""
        dirty = False
        for key, outcome, version in outcomes:
            if outcome == WRITTEN:
                self._retries.pop(key, None)
                continue
            self._in_flight.discard(key)  # it did not land: the status is what the watch shows
            self._written.pop(key, None)
            if outcome in (CONFLICT, FAILED, DENIED):
                r = self._retries.get(key) or Retry(now, version, Backoff(initial=1.0, maximum=60.0))
                r.at, r.resource_version = now + r.backoff.next(), version
                self._retries[key] = r
                dirty = True
        return dirty

    def _record(self, e: WatchEvent, leader: bool) -> bool:
        """Records one event; True when it may change a decision: the Service's value changed (not only its
        resourceVersion or conditions, which the leader's own writes change), or a write of it waits for
        a newer version."""
        if e.kind == "REPLACE":
            self.services = dict(e.value)
            for gone in self._written.keys() - self.services.keys():
                del self._written[gone]
                self._in_flight.discard(gone)
            return True
        key, svc = e.value
        if e.kind == "DELETE":
            self._written.pop(key, None)
            self._in_flight.discard(key)
            return self.services.pop(key, None) is not None
        old = self.services.get(key)
        self.services[key] = svc
        overwritten = leader and self._observe(svc)
        return old != svc or key in self._retries or overwritten

    def _observe(self, svc: Service) -> bool:
        """Follows our writes landing, and notices a status that is neither what we wrote nor empty, soon
        after we wrote it: a fight. True when what we wrote was overwritten."""
        written = self._written.get(svc.key)
        if written is None:
            return False
        if svc.ingress_ips == written[0]:
            self._in_flight.discard(svc.key)
            return False
        if not svc.ingress_ips:
            return False
        self._in_flight.discard(svc.key)  # overwritten: the next run decides again
        now = self.clock()
        if now - written[1] > FIGHT_WINDOW:
            return True
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
        return True

    def allocate_now(self) -> None:
        """One run over the full state."""
        self.runs += 1
        now = self.clock()
        self._resync_at = now + RESYNC
        self._yielded = {k: t for k, t in self._yielded.items() if now - t < YIELD_FOR}
        ours = {k: s for k, s in self.services.items() if is_ours(s, self.config)}
        # Our own writes count as the status until the watch shows them (or they are too old to trust):
        # without that, a second run before they land could hand the same address to another Service.
        view = {}
        for key, svc in ours.items():
            written = self._written.get(key)
            if (
                written is not None
                and key in self._in_flight
                and written[0] != svc.ingress_ips
                and now - written[1] < IN_FLIGHT_FOR
            ):
                svc = dataclasses.replace(svc, ingress_ips=written[0])
            view[key] = svc
        result = assign(view.values(), self.config.pools, self.field_manager)
        for key, ips in result.ips.items():
            svc = view[key]
            if key in self._yielded or self._backing_off(svc, now):
                continue
            if ips == svc.ingress_ips:
                if ips and self.field_manager not in svc.status_managers and key not in self._in_flight:
                    self._take_over(svc, now)
                continue
            retrying = key in self._retries
            self._write(svc, ips, now)
            if ips and not retrying:
                self.metrics.allocations.inc()
                log.info("allocating %s to %s", ", ".join(ips), fmt_key(key))
                self.events.event(key, svc.uid, "Normal", "Allocated", f"allocated {', '.join(ips)}")
        self._release_not_ours(now)
        by_key: dict[Key, list[tuple[str, str]]] = {}
        for c in result.conflicts:
            by_key.setdefault(c.key, []).append((c.reason, c.message))
        for key, items in by_key.items():
            signature = tuple(m for _, m in items)
            if self._reported.get(key) != signature:
                self._reported[key] = signature
                for reason, message in items:
                    self._report(ours[key], reason, message)
        for key in list(self._reported):
            if key not in by_key:
                del self._reported[key]
        if self.on_assigned is not None:
            yielded = ((STATUS_CONFLICT, YIELDED),)
            self._decided = {
                key: (
                    result.ips.get(key, ()),
                    (*by_key.get(key, ()), *(yielded if key in self._yielded else ())),
                )
                for key in ours
            }

    def _hand_over(self, keys: Iterable[Key]) -> None:
        """Tells ``on_assigned`` which of these Services changed: their object (a new version, if only of its
        conditions) or what was decided for them; all of them the first time in a term."""
        assert self.on_assigned is not None
        everything = not self._handed
        changes: dict[Key, Assigned | None] = {}
        for key in keys:
            svc, before = self.services.get(key), self._handed.get(key)
            if svc is None:
                if self._handed.pop(key, None) is not None:
                    changes[key] = None
                continue
            decided = self._decided.get(key)
            if not is_ours(svc, self.config):
                now = Assigned(svc, False)
            elif decided is None:
                continue  # ours since the last run: the next one decides it
            else:
                now = Assigned(svc, True, *decided, writing=key in self._in_flight)
            if before is None or before.svc is not svc or before != now:
                self._handed[key] = changes[key] = now
        if changes or everything:
            self.on_assigned(changes, everything)

    def _release_not_ours(self, now: float) -> None:
        """Status that our group of agents wrote (managedFields: our field manager) with IPs of our
        prefixes, on a LoadBalancer Service that is not ours (the agents' class settings changed), is
        cleared. What another group of l3lb agents (another Lease) or another controller wrote is left
        alone. A Service that stops being a LoadBalancer needs nothing: the apiserver clears
        status.loadBalancer itself when the type changes."""
        for key, svc in self.services.items():
            if (
                self.field_manager in svc.status_managers
                and svc.ingress_ips
                and all(self.config.in_prefix(ip) for ip in svc.ingress_ips)
                and not is_ours(svc, self.config)
            ):
                if key in self._in_flight and now - self._written[key][1] < IN_FLIGHT_FOR:
                    continue
                if self._backing_off(svc, now):
                    continue
                log.info("releasing %s of %s: not ours any more", ", ".join(svc.ingress_ips), fmt_key(key))
                self._write(svc, (), now)

    def _take_over(self, svc: Service, now: float) -> None:
        """Status that another controller wrote (or that nobody owns), with the IPs we decided on: kept as
        it is, and from now on ours (managedFields), so that it is handled as the rest of what we wrote."""
        who = ", ".join(svc.status_managers) or "nobody"
        log.info("taking over %s of %s from %s", ", ".join(svc.ingress_ips), fmt_key(svc.key), who)
        self.writer.write(svc.key, svc.ingress_ips, svc.resource_version, take_over=True)
        self._written[svc.key] = (svc.ingress_ips, now)
        self._in_flight.add(svc.key)
        self.events.event(
            svc.key,
            svc.uid,
            "Normal",
            "TakenOver",
            f"kept {', '.join(svc.ingress_ips)}, which {who} wrote in status; l3lb owns it now",
        )

    def _backing_off(self, svc: Service, now: float) -> bool:
        """A write of this Service did not land, its retry is not due, and the watch has shown no newer
        version of it (with one, a write conditional on it may succeed: no need to wait)."""
        r = self._retries.get(svc.key)
        return r is not None and now < r.at and svc.resource_version == r.resource_version

    def _write(self, svc: Service, ips: tuple[str, ...], now: float) -> None:
        log.debug("writing status of %s: %s", fmt_key(svc.key), ", ".join(ips) or "nothing")
        self.writer.write(svc.key, ips, svc.resource_version)
        self._written[svc.key] = (ips, now)
        self._in_flight.add(svc.key)

    def _report(self, svc: Service, reason: str, message: str) -> None:
        log.warning("%s: %s: %s", fmt_key(svc.key), reason, message)
        self.metrics.conflicts.labels(reason).inc()
        self.events.event(svc.key, svc.uid, "Warning", reason, message)
