"""The leader's keeper of the Services' conditions, in a thread of the conditions worker (``worker.py``), a
process that runs only while this agent leads.

Its inputs: from the allocator, each LoadBalancer Service as the watch shows it with what the allocator
decided for it (``Assigned``, only the changed ones; all of them when a term starts), and while this agent
leads, two watches of its own that no other agent runs: every Node, and every EndpointSlice with its ready
endpoints per node (``ClusterView``). Each input is recorded in O(what changed) and marks the Services it
can change; once both watches have listed and the allocator has handed everything over, the keeper decides
those Services' conditions (``compose``) and asks the writer for the ones whose text differs from what the
Service holds (type, status, reason, message, observedGeneration; lastTransitionTime is kept unless the
status changes). No API read per event; a new leader computes the same text and writes nothing where
nothing changed.

A write that met a conflict (the Service changed since the decision) is decided again from the newer
version when the watch brings it, never written again at the version it was decided on; any other failure,
and a write held back because the lease was not valid at that moment, is decided again after a backoff of
its own (1 s doubling to 60 s), never at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..backoff import Backoff
from ..config import Config
from ..ipam.allocator import Assigned
from ..k8s.conditions import REJECTED, Request
from ..k8s.watch import Sink
from ..k8s.writer import CONFLICT, DENIED, FAILED, NOT_LEADING, WRITTEN
from ..model import Condition, Key, Service, WatchEvent, fmt_key, is_ours
from ..node.cluster import NODES, SLICES_BY_NODE, ClusterView
from .compose import TYPES, allocated, announced

log = logging.getLogger(__name__)

BATCH = 0.05
"""Seconds inputs gather before the keeper acts: a burst costs one pass."""


class Writer(Protocol):
    def write(self, key: Key, request: Request, *, urgent: bool = False) -> None: ...
    def drop(self) -> None: ...
    @property
    def backlog(self) -> int: ...


class Recorder(Protocol):
    def event(self, key: Key, uid: str, kind: str, reason: str, message: str) -> object: ...


class Tally(Protocol):
    """Where the keeper counts its writes (by outcome) and its backlog: the agent's metrics, which the
    worker reports to (``worker.py``)."""

    def written(self, outcome: str) -> None: ...
    def backlog(self, pending: int) -> None: ...


StartWatches = Callable[[Sink], Callable[[], None]]
"""Starts the leader's watches (NODES, SLICES_BY_NODE) delivering to the sink; returns what stops them."""


@dataclass(slots=True)
class Retry:
    at: float
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))


class Keeper:
    def __init__(
        self,
        config: Config,
        writer: Writer,
        events: Recorder,
        tally: Tally,
        start_watches: StartWatches,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.writer = writer
        self.events = events
        self.tally = tally
        self.start_watches = start_watches
        self.clock = clock
        self.wall = wall
        self.assigned: dict[Key, Assigned] = {}
        self.view = ClusterView(config)
        self._cond = threading.Condition()
        self._inbox: list[tuple[str, Any]] = []
        self._leading = False
        self._term = 0
        self._stop_watches: Callable[[], None] | None = None
        self._listed: set[str] = set()
        self._started = False
        """This term's first pass over every Service is done."""
        self._complete = False
        """The allocator has handed over every Service since leadership started."""
        self._asked: dict[Key, tuple[Condition, ...]] = {}
        """What was last asked of the writer per Service, until the watch shows it or the write fails."""
        self._retries: dict[Key, Retry] = {}
        self._landed: dict[Key, dict[str, tuple[str, Request]]] = {}
        """Our writes that landed, per Service: the version each was made at -> (the version it made, the
        request), until the watch shows them. What the keeper decides next starts from them, so that a
        change right after a write is not made at the version the write replaced (a conflict)."""
        self._stale: dict[Key, str] = {}
        """Services whose write met a conflict: the version it was decided on, never to write at again."""
        self._rejected: set[Key] = set()
        self._dirty: set[Key] = set()

    # ---- inputs (other threads)
    def on_assigned(self, changes: dict[Key, Assigned | None], everything: bool) -> None:
        """The allocator's hand-over; ``everything``: ``changes`` is every Service (a term starts)."""
        self._put("assigned", (changes, everything))

    def on_leader(self, leader: bool) -> None:
        self._put("leader", leader)

    def written(self, key: Key, outcome: str, request: Request, landed: str) -> None:
        """How a write went (the writer's ``on_written``)."""
        self._put("written", (key, outcome, request, landed))

    def _put(self, kind: str, value: Any) -> None:
        with self._cond:
            self._inbox.append((kind, value))
            self._cond.notify()

    def _sink(self, term: int) -> Sink:
        def sink(resource: str, kind: str, value: Any) -> None:
            self._put("watch", (term, WatchEvent(resource, kind, value, 0.0)))

        return sink

    # ---- the loop
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="conditions", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                with self._cond:
                    while not (self._inbox or stop.is_set()) and (wait := self._wait()) > 0:
                        self._cond.wait(min(wait, 1.0))
                    inbox, self._inbox = self._inbox, []
                self.step(inbox)
                stop.wait(BATCH)
        finally:
            if self._stop_watches is not None:
                self._stop_watches()

    def _wait(self) -> float:
        due = min((r.at for r in self._retries.values()), default=None)
        return 1.0 if due is None else due - self.clock()

    def step(self, inbox: Iterable[tuple[str, Any]]) -> None:
        """Records the inputs in order, then decides the conditions of the Services they touched. The
        loop's body; tests call it directly."""
        handled = []
        for kind, value in inbox:
            if kind == "leader":
                self._lead(value)
            elif kind == "assigned":
                self._assigned(*value)
                handled.extend(f"services {fmt_key(k)}" for k in value[0])
            elif kind == "watch":
                term, event = value
                if term == self._term and self._leading:
                    self.view.record(event)
                    if event.kind == "REPLACE":
                        self._listed.add(event.resource)
                    handled.append(str(event))
            else:
                self._written(*value)
        now = self.clock()
        due = {k for k, r in self._retries.items() if r.at <= now}
        if self._leading and self._complete and self._listed == {NODES, SLICES_BY_NODE}:
            keys = self._dirty | self.view.take_dirty() | due
            asked = len(self._asked)
            for key in keys:
                self._decide(key, now)
            self._dirty.clear()
            if not self._started:
                self._started = True
                log.info(
                    "keeping the conditions of %d Services with %d nodes: %d to write",
                    len(self.view.services),
                    len(self.view.nodes),
                    len(self._asked) - asked,
                )
        self.tally.backlog(self.writer.backlog)
        if handled and log.isEnabledFor(logging.DEBUG):
            more = f"; and {len(handled) - 20} more" if len(handled) > 20 else ""
            log.debug("handled %s%s", "; ".join(handled[:20]), more)

    def _lead(self, leader: bool) -> None:
        if leader == self._leading:
            return
        self._leading = leader
        self._term += 1
        if self._stop_watches is not None:
            self._stop_watches()
            self._stop_watches = None
        self.view = ClusterView(self.config)
        self._started = False
        self._listed.clear()
        self._asked.clear()
        self._retries.clear()
        self._landed.clear()
        self._stale.clear()
        self._rejected.clear()
        if leader:
            self._dirty = set(self.assigned)
            self._stop_watches = self.start_watches(self._sink(self._term))
            for a in self.assigned.values():
                if a.ours:
                    self.view.set_service(a.svc)
        else:
            self.writer.drop()
            self.assigned.clear()
            self._complete = False
            self._dirty.clear()

    def _assigned(self, changes: dict[Key, Assigned | None], everything: bool) -> None:
        changes = dict(changes)
        if everything:
            for key in self.assigned.keys() - changes.keys():
                changes[key] = None
            self._complete = True
        for key, a in changes.items():
            if a is None:
                self._gone(key)
                continue
            self.assigned[key] = a
            if a.ours:
                self.view.set_service(a.svc)
            else:
                self.view.delete_service(key)
            self._dirty.add(key)

    def _gone(self, key: Key) -> None:
        """The Service left the watch of LoadBalancer Services: deleted, or no LoadBalancer any more (the
        apiserver then clears status.loadBalancer but not the conditions). Ours are removed, if it has any,
        with its uid as a precondition, at the writer's pace; a deleted Service answers 404."""
        a = self.assigned.pop(key, None)
        self.view.delete_service(key)
        self._asked.pop(key, None)
        self._retries.pop(key, None)
        self._landed.pop(key, None)
        self._stale.pop(key, None)
        self._dirty.discard(key)
        if a is not None and a.svc.conditions and self._leading:
            self.writer.write(key, Request((), tuple(c.type for c in a.svc.conditions), "", a.svc.uid))

    def _written(self, key: Key, outcome: str, request: Request, landed: str) -> None:
        self.tally.written(outcome)
        if outcome == WRITTEN:
            self._retries.pop(key, None)
            if landed and request.resource_version and key in self.assigned:
                self._landed.setdefault(key, {})[request.resource_version] = (landed, request)
            return
        self._asked.pop(key, None)  # it did not land: the Service holds what the watch shows
        if key not in self.assigned:
            return
        if outcome == CONFLICT:
            self._stale[key] = request.resource_version
            self._dirty.add(key)  # the newer version may be here already
        elif outcome in (FAILED, DENIED, REJECTED, NOT_LEADING):
            r = self._retries.get(key) or Retry(0.0)
            r.at = self.clock() + r.backoff.next()
            self._retries[key] = r
            if outcome == REJECTED and key not in self._rejected:
                self._rejected.add(key)
                svc = self.assigned[key].svc
                self.events.event(
                    key,
                    svc.uid,
                    "Warning",
                    "ConditionsRejected",
                    "the apiserver refused l3lb's conditions for this Service (the elected agent logs why)",
                )

    def _decide(self, key: Key, now: float) -> None:
        a = self.assigned.get(key)
        if a is None:
            return
        svc = a.svc
        version, current = self._seen(key, svc)
        if self._stale.get(key) == version:
            return  # the version a write met a conflict on: wait for the newer one
        self._stale.pop(key, None)
        r = self._retries.get(key)
        if r is not None and now < r.at:
            return  # backing off
        if not a.ours or not is_ours(svc, self.config):
            if not current:
                self._asked.pop(key, None)
            elif self._asked.get(key) != ():
                self._ask(key, version, svc.uid, (), tuple(current), urgent=False)
            return
        first = allocated(a, self.config)
        if first is None:
            return  # the allocator's status write is on its way: decided when the watch shows it
        wanted = (first, announced(svc, self.view.announcement(key)))
        stale = tuple(t for t in current if t not in TYPES)
        if not stale and all(current.get(c.type) == c for c in wanted):
            self._asked.pop(key, None)
            return
        if self._asked.get(key) == wanted:
            return  # asked already; the watch has not shown it yet
        stamp = dt.datetime.fromtimestamp(self.wall(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = []
        for c in wanted:
            old = current.get(c.type)
            kept = old is not None and old.status == c.status and old.last_transition_time
            out.append(Condition(c.type, c.status, c.reason, c.message, c.observed_generation, kept or stamp))
        urgent = any(c.type not in current or current[c.type].status != c.status for c in wanted)
        self._ask(key, version, svc.uid, tuple(out), stale, urgent=urgent)

    def _seen(self, key: Key, svc: Service) -> tuple[str, dict[str, Condition]]:
        """The Service's version and our conditions on it: as the watch shows them, or after our writes
        that landed since (the watch shows them soon after)."""
        version, current = svc.resource_version, {c.type: c for c in svc.conditions}
        chain = self._landed.get(key, {})
        if version not in chain:
            self._landed.pop(key, None)  # the watch caught up, or the Service changed otherwise
            return version, current
        while version in chain:
            version, request = chain[version]
            current = {t: c for t, c in current.items() if t not in request.remove}
            current.update((c.type, c) for c in request.conditions)
        return version, current

    def _ask(
        self,
        key: Key,
        resource_version: str,
        uid: str,
        conditions: tuple[Condition, ...],
        remove: tuple[str, ...],
        *,
        urgent: bool,
    ) -> None:
        log.debug(
            "asking for conditions of %s: %s",
            fmt_key(key),
            "; ".join(f"{c.type}={c.status} {c.reason}: {c.message}" for c in conditions) or "none of ours",
        )
        self.writer.write(key, Request(conditions, remove, resource_version, uid), urgent=urgent)
        self._asked[key] = conditions
