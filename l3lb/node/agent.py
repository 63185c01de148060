"""The agent's loop: messages in, syncs out. It wires the two change trackers (``Tracker`` for the API,
``Presence`` for the interfaces), the ``SyncRunner`` that says when to sync, and the apply step; the sync is
the only writer to the interfaces.

Watch threads and the netlink monitor only put typed messages in the ``Inbox``. The loop records each in
its tracker (O(what changed)), then:
- a sync of changes plans and applies just the IPs whose decision or presence changed;
- a full sync (at start, every resync interval, after a failure) plans over every address and collects
  strays; the renewals of lifetimes it finds due are applied in small batches, one batch each turn of the
  loop whatever else is due, so a large table never delays an event and churn never starves a renewal.
Nothing is removed until the Services, EndpointSlices and this Node have each been listed once: never act
on half a picture. Hold-downs and drains end on their own time (``Timers``): the runner wakes the loop then.

A stop (SIGTERM) with ``--drain-seconds`` drains first: the loop goes on while every IP it holds is
advertised from the drain interface, then ends; the daemon withdraws what is left. A second stop ends the
drain at once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..config import Config
from ..metrics import Metrics
from ..model import NODE, WatchEvent
from ..netlink.tables import AddressTable
from ..systemd import Notifier
from .placement import Placement
from .plan import Plan, plan
from .presence import UNAPPLIED_AFTER, Presence
from .report import Reporter
from .runner import AddressEvent, Inbox, Message, MonitorLost, Sync, SyncRunner
from .timers import Timers
from .tracker import Tracker

log = logging.getLogger(__name__)

LOOP_STUCK_AFTER = 30.0
RENEW_BATCH = 50
"""Renewals applied between two looks at the inbox: at 9,000 addresses on one interface the kernel takes
up to about 50 us for each (far more with cold caches), so an event waits at most a few ms behind a
batch."""


DRAIN_GRACE = 1.0
"""Seconds past the end of a stop's drain after which the loop ends even if its syncs fail (the daemon then
withdraws what is left)."""


class Watched(Protocol):
    resource: str
    last_progress: float
    stuck_after: float


class Agent:
    def __init__(
        self,
        config: Config,
        table: AddressTable,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        inbox: Inbox | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier({})
        self.clock = clock
        self.inbox = inbox or Inbox()
        self.tracker = Tracker(config)
        self.presence = Presence(config, table, clock, self.inbox.put)
        self.timers = Timers(config, self.tracker, clock)
        self.placement = Placement(config, self.tracker, self.presence, self.timers, clock)
        self.report = Reporter(config, self.tracker, self.metrics)
        self.runner = SyncRunner(clock, self.resync_interval)
        self.listed: set[str] = set()
        self.sync_count = 0
        self.watched: Sequence[Watched] = ()
        self.last_loop = clock()
        self._renewals: dict[str, str] = {}
        """IP -> interface, due for renewal: queued by full syncs, applied RENEW_BATCH at a time."""
        self._batch_start: float | None = None
        self._drain_ends: float | None = None
        """While stopping with a drain: when it ends at the latest."""
        self._syncs_at_stop = 0
        self._drain_on_stop = True

    @property
    def resync_interval(self) -> float:
        return min(10.0, self.config.renew_after / 2) if self.config.address_lifetime else 10.0

    @property
    def ready(self) -> bool:
        return len(self.listed) == 3 and self.sync_count > 0

    def health(self) -> str | None:
        """None when healthy; else what is wrong (for /healthz): the loop stuck, a watch without progress,
        the monitor down, or changes left unapplied (failing syncs, a refused address) for too long."""
        now = self.clock()
        if now - self.last_loop > LOOP_STUCK_AFTER:
            return f"sync loop stuck for {now - self.last_loop:.0f}s"
        for w in self.watched:
            if now - w.last_progress > w.stuck_after:
                return f"watch of {w.resource} without progress for {now - w.last_progress:.0f}s"
        failing = self.runner.failing_since
        if failing is not None and now - failing > UNAPPLIED_AFTER:
            return f"syncs failing for {now - failing:.0f}s: changes are not applied"
        return self.presence.problem(now)

    # ---- inputs (called from other threads; stop() also from a signal handler)
    def sink(self, resource: str, kind: str, value: object) -> None:
        self.inbox.put(WatchEvent(resource, kind, value, self.clock()))

    def stop(self, drain: bool = True) -> None:
        """Ends ``run()``, after a drain unless ``drain`` is False (the daemon then keeps the addresses).
        Takes no lock, so a signal handler may call it whatever the loop is doing."""
        if not drain:
            self._drain_on_stop = False
        self.inbox.stop()

    # ---- the loop
    def run(self) -> None:
        self.presence.start_monitor()
        while not self._over():
            self.last_loop = now = self.clock()
            self.notifier.ping(now)
            retry = self.presence.next_retry()
            if retry is not None and retry <= now:
                self.runner.changed()  # a refused address is due again
            wait = min(self.runner.timeout(), 0.5, retry - now if retry is not None and retry > now else 0.5)
            messages = self.inbox.wait(0.0 if self._renewals else wait)
            for message in messages:
                self._record(message)
            if self._over():
                break
            due = self.runner.due()
            if due is not None:
                self.runner.done(due, self.sync(due))
            if self._renewals:
                self._renew_some()
            if messages and log.isEnabledFor(logging.DEBUG):
                # "the agent has acted on this event": what tests wait for before asserting an absence
                shown = "; ".join(map(str, messages[:20]))
                more = f"; and {len(messages) - 20} more" if len(messages) > 20 else ""
                log.debug("handled %s%s", shown, more)
        if self._drain_ends is None:
            self.notifier.send("STOPPING=1")

    def _over(self) -> bool:
        """Whether the loop ends now: at a stop, unless it drains first (then once the drain is over and a
        sync has withdrawn what drained); at once at a stop during the drain."""
        if self.inbox.stopping:
            if self._drain_ends is not None or not self._drains_first():
                return True
            self.inbox.take_stop()
            self._drain_ends = self.clock() + self.config.drain_seconds
            self._syncs_at_stop = self.sync_count
            self.tracker.set_stopping()
            self.runner.changed()
            held = len(self.presence.held)
            what = f"{held} address{'' if held == 1 else 'es'}"
            log.info(
                "stopping: draining %s for %ds, then withdrawing (a second SIGTERM ends the drain)",
                what,
                self.config.drain_seconds,
            )
            self.notifier.send("STOPPING=1", f"STATUS=stopping: draining {what}")
            return False
        if self._drain_ends is None:
            return False
        drained = self.sync_count > self._syncs_at_stop and not self.timers.draining
        return drained or self.clock() >= self._drain_ends + DRAIN_GRACE

    def _drains_first(self) -> bool:
        """A stop drains what this agent holds when draining is on and it has the full picture (without,
        the decision that drains is not there: the addresses are withdrawn at once, as with 0)."""
        c = self.config
        return (
            c.drain_seconds > 0
            and self._drain_on_stop
            and not (c.keep_on_exit or c.dry_run)
            and self.ready
            and bool(self.presence.held)
        )

    # ---- recording: O(the message)
    def _record(self, m: Message) -> None:
        if isinstance(m, MonitorLost):
            self.presence.reread()  # now, not at the next full sync
            self._changed(m.at)
        elif isinstance(m, AddressEvent):
            if self.presence.record(m, self.tracker.announced):
                self._changed(m.at)
        else:
            self.tracker.record(m)
            if m.resource == NODE:
                self.report.node(self.tracker.node)
            if m.kind == "REPLACE" and m.resource not in self.listed:
                log.info("initial list of %s done (%d objects)", m.resource, len(m.value))
                self.listed.add(m.resource)
                if len(self.listed) == 3:
                    self.presence.reread()  # the first full picture: a full sync, from a fresh read
                    self.runner.changed()
            if self.tracker.pending:
                self._changed(m.at)

    def _changed(self, at: float) -> None:
        if self._batch_start is None:
            self._batch_start = at
        self.runner.changed()

    # ---- syncing
    def sync(self, kind: Sync = Sync.FULL) -> bool:
        """Brings the interfaces to the decision; True on success (a refused address backs off on its own
        and fails nothing). Before the first full picture, only renews what is there."""
        started = self.clock()
        kind = Sync.FULL if self.sync_count == 0 else kind  # the first sync with the full picture
        try:
            if len(self.listed) < 3:
                self._keep_what_is_there(started)
                return True
            self._sync(kind, started)
        except Exception:
            log.exception("sync failed; retrying with a full sync")
            self.presence.reread()
            return False
        self._account(started, kind)
        return True

    def _sync(self, kind: Sync, now: float) -> None:
        full = kind is Sync.FULL
        touched = self.tracker.update() | self.presence.update(full)
        present, wanted = self.presence.present, self.tracker.announced
        touched = self.timers.update(touched, present, self.presence.held)
        self.report.timed(self.timers)
        if full:
            self.placement.prune()
            p = plan(self.placement.desired(), present, self.config, now)
            for ip, interface in p.renew:
                self._renewals.setdefault(ip, interface)
            p.renew = []
            if self.sync_count == 0:
                self.report.adopted(wanted & present.keys(), self.presence)
        else:
            p = plan(self.placement, present, self.config, now, touched)
        done = self.presence.apply(self.presence.hold_back(p, None if full else touched))
        self.report.applied(done, self.presence)
        self.placement.record(done)
        self.presence.settle(None if full else touched, wanted)
        self.runner.wake(self.timers.next_due())

    def _keep_what_is_there(self, now: float) -> None:
        """No full picture yet (Services, EndpointSlices and the Node not each listed once): remove nothing,
        add nothing, and renew the lifetimes of what is there, so that it expires only if the agent dies."""
        self.presence.update()
        present = self.presence.present
        ours = {ip: have.interface for ip, have in present.items() if self.config.in_prefix(ip)}
        for ip, interface in plan(ours, present, self.config, now).renew:
            self._renewals.setdefault(ip, interface)
        if not self.notifier.ready:
            self.notifier.status(f"holding {len(ours)} adopted addresses; waiting for the API")

    def _renew_some(self) -> None:
        """Renews up to RENEW_BATCH addresses that are still wanted and present where they were."""
        queue, present, refused = self._renewals, self.presence.present, self.presence.refused
        batch = [(ip, queue.pop(ip)) for ip in list(itertools.islice(queue, RENEW_BATCH))]
        still = [
            (ip, interface)
            for ip, interface in batch
            if (have := present.get(ip)) is not None
            and have.interface == interface
            and (len(self.listed) < 3 or ip in self.placement)
            and ip not in refused
        ]
        try:
            self.report.applied(self.presence.apply(Plan(renew=still)), self.presence)
        except Exception:
            log.exception("renewing lifetimes failed; retrying with a full sync")
            self.presence.reread()
            self._renewals.clear()
            self.runner.done(Sync.FULL, False)

    def _account(self, started: float, kind: Sync) -> None:
        m, held = self.metrics, self.presence.held
        end = self.clock()
        m.reconcile.labels(kind.value).observe(end - started)
        if self._batch_start is not None:
            m.event_to_apply.observe(end - self._batch_start)
            self._batch_start = None
        m.addresses.labels("ipv4").set(len(held) - self.presence.held_v6)
        m.addresses.labels("ipv6").set(self.presence.held_v6)
        m.last_sync.set(time.time())
        self.sync_count += 1
        if self.sync_count == 1:
            log.info("initial sync done: holding %d addresses", len(held))
            self.notifier.status(f"holding {len(held)} addresses")

    def withdraw_all(self) -> None:
        """On exit: removes every host-length address of ours (inside the prefixes) from the interfaces."""
        try:
            self.report.stopping(self.presence.withdraw_all())
        except Exception:
            log.exception("could not withdraw the addresses")
