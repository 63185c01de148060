"""The agent's loop: messages in, syncs out. The sync is the only writer to the interface.

Watch threads and the netlink monitor only put typed messages in the ``Inbox``. The loop records each in
the tracker (O(what changed)), and the ``SyncRunner`` says when to sync:
- a sync of changes plans and applies just the IPs whose decision or presence changed;
- a full sync (at start, every resync interval, after a failure) plans over every address, renews their
  lifetimes and collects strays; its renewals are applied in small batches, with events served between
  them, so a large table never delays an event.
Nothing is removed until the Services, EndpointSlices and this Node have each been listed once: never act
on half a picture. The echoes of the agent's own netlink writes never reach the loop (the table drops
them), so they cost nothing and cannot be mistaken for someone else's change. Service events also go to
the allocator, which decides and writes status in its own thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .allocator import Allocator
from .apply import AddressTable, NetlinkTable, Plan, Present, plan
from .config import CLASS_PREFIX, Config
from .decide import NOT_WANTED
from .metrics import Metrics
from .model import NODE, SERVICES, SLICES, Key, fmt_key
from .runner import AddressEvent, Inbox, Message, MonitorLost, Sync, SyncRunner, WatchEvent
from .systemd import Notifier
from .tracker import Tracker

log = logging.getLogger(__name__)

LOOP_STUCK_AFTER = 30.0
WEIGHT_HOLD = 5.0
"""Seconds an IP stays in its weight class after a move before it may move again."""
RENEW_BATCH = 50
"""Renewals applied between two looks at the inbox: at 9,000 addresses on one interface the kernel takes
up to about 50 us for each (far more with cold caches), so an event waits at most a few ms behind a
batch."""
STRAY = "stray"
REPAIR = "repair"


class Writer(Protocol):
    def event(self, key: Key, uid: str, kind: str, reason: str, message: str) -> None: ...


class Watched(Protocol):
    resource: str
    last_progress: float
    stuck_after: float


class Placement(Mapping[str, str]):
    """The announced IPs and the interface each goes on: what ``plan()`` brings the interfaces to."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def __getitem__(self, ip: str) -> str:
        if ip not in self.agent.tracker.announced:
            raise KeyError(ip)
        return self.agent.interface_for(ip)

    def __iter__(self) -> Iterator[str]:
        return iter(self.agent.tracker.announced)

    def __len__(self) -> int:
        return len(self.agent.tracker.announced)


@dataclass(frozen=True, slots=True)
class Why:
    """Why an IP is (or is no longer) held: the Service that decides it, a reason token and the detail."""

    key: Key | None
    reason: str
    detail: str

    def __str__(self) -> str:
        return f" for {fmt_key(self.key)}: {self.detail}" if self.key else f": {self.detail}"


class Agent:
    def __init__(
        self,
        config: Config,
        table: AddressTable,
        *,
        writer: Writer | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        allocator: Allocator | None = None,
        clock: Callable[[], float] = time.monotonic,
        inbox: Inbox | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self.writer = writer
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier({})
        self.allocator = allocator
        """Handed every Service watch event: it allocates in its own thread."""
        self.clock = clock
        self.inbox = inbox or Inbox()
        self.runner = SyncRunner(clock, self.resync_interval)
        self.tracker = Tracker(config)
        self.synced: set[str] = set()
        self.present: dict[str, Present] = {}
        self.held: set[str] = set()
        """IPs this agent holds and still wants: re-adding one is a repair."""
        self._held_v6 = 0
        self.sync_count = 0
        self.watched: Sequence[Watched] = ()
        self.last_loop = clock()
        self._dirty_ips: set[str] = set()
        """IPs whose presence changed under us (netlink): planned by the next sync of changes."""
        self._renewals: collections.deque[str] = collections.deque()
        self._needs_dump = True
        self._ready_sent = False
        self._next_ping = 0.0
        self._batch_start: float | None = None
        self._duplicates: set[tuple[str, str]] = set()
        """(ip, interface) of second copies of an address on our interfaces: collected by the next sync."""
        self._moved: dict[str, float] = {}
        """When each IP last moved between weight classes."""
        self.placement = Placement(self)

    @property
    def resync_interval(self) -> float:
        return min(10.0, self.config.renew_after / 2) if self.config.address_lifetime else 10.0

    @property
    def ready(self) -> bool:
        return len(self.synced) == 3 and self.sync_count > 0

    def health(self) -> str | None:
        """None when healthy; else what is wrong (for /healthz)."""
        now = self.clock()
        if now - self.last_loop > LOOP_STUCK_AFTER:
            return f"sync loop stuck for {now - self.last_loop:.0f}s"
        for w in self.watched:
            if now - w.last_progress > w.stuck_after:
                return f"watch of {w.resource} without progress for {now - w.last_progress:.0f}s"
        if isinstance(self.table, NetlinkTable):
            return self.table.monitor_health()
        return None

    # ---- inputs (called from other threads; stop() also from a signal handler)
    def sink(self, resource: str, kind: str, value: object) -> None:
        self.inbox.put(WatchEvent(resource, kind, value, self.clock()))

    def on_netlink(self, kind: str, ip: str, present: Present | None) -> None:
        at = self.clock()
        self.inbox.put(MonitorLost(at) if kind == "lost" else AddressEvent(kind, ip, present, at))

    def stop(self) -> None:
        """Ends ``run()``. Takes no lock, so a signal handler may call it whatever the loop is doing."""
        self.inbox.stop()

    # ---- the loop
    def run(self) -> None:
        if isinstance(self.table, NetlinkTable):
            self.table.monitor(self.on_netlink)
            self.table.monitoring.wait(5.0)  # so that no change slips between the first dump and the monitor
        while not self.inbox.stopping:
            self.last_loop = self.clock()
            self._ping()
            timeout = 0.0 if self._renewals else min(self.runner.timeout(), 0.5)
            messages = self.inbox.wait(timeout)
            for message in messages:
                self._record(message)
            if self.inbox.stopping:
                break
            due = self.runner.due()
            if due is not None:
                self.runner.done(due, self.sync(due))
            elif self._renewals:
                self._renew_some()
            if messages and log.isEnabledFor(logging.DEBUG):
                # "the agent has acted on this event": what tests wait for before asserting an absence
                shown = "; ".join(map(str, messages[:20]))
                log.debug(
                    "handled %s%s", shown, f"; and {len(messages) - 20} more" if len(messages) > 20 else ""
                )
        self.notifier.send("STOPPING=1")

    def _ping(self) -> None:
        interval = self.notifier.watchdog_interval
        now = self.clock()
        if interval is not None and now >= self._next_ping:
            self.notifier.send("WATCHDOG=1")
            self._next_ping = now + interval

    # ---- recording: O(the message)
    def _record(self, m: Message) -> None:
        if isinstance(m, MonitorLost):
            self._needs_dump = True
            self._changed(m.at)
            return
        if isinstance(m, AddressEvent):
            have = self.present.get(m.ip)
            where = m.present.interface if m.present is not None else self.config.interface
            if m.kind == "del":
                self._duplicates.discard((m.ip, where))
                if have is not None and have.interface == where:
                    del self.present[m.ip]
                    if m.ip in self.tracker.announced:
                        self._dirty_ips.add(m.ip)  # ours, removed by someone else: restore it
            elif have is not None and have.interface != where:
                if self.config.in_prefix(m.ip):
                    self._duplicates.add((m.ip, where))  # a second copy on another of our interfaces
            elif m.present is not None:
                self.present[m.ip] = m.present
                if m.ip not in self.tracker.announced and self.config.in_prefix(m.ip):
                    self._dirty_ips.add(m.ip)  # a stray: collect it
            if self._dirty_ips or self._duplicates:
                self._changed(m.at)
            return
        self._record_watch(m)
        if self.tracker.pending:
            self._changed(m.at)

    def _changed(self, at: float) -> None:
        if self._batch_start is None:
            self._batch_start = at
        self.runner.changed()

    def _record_watch(self, m: WatchEvent) -> None:
        t = self.tracker
        if m.resource == SERVICES and self.allocator is not None:
            self.allocator.offer(m)
        if m.kind == "REPLACE":
            if m.resource == SERVICES:
                t.replace_services(m.value)
            elif m.resource == SLICES:
                t.replace_slices(m.value)
            else:
                t.set_node(m.value[0][1] if m.value else None)
            if m.resource not in self.synced:
                log.info("initial list of %s done (%d objects)", m.resource, len(m.value))
                self.synced.add(m.resource)
                if len(self.synced) == 3:
                    self._needs_dump = True  # the first full picture: a full sync, from a fresh dump
                    self.runner.changed()
        elif m.resource == SERVICES:
            key, svc = m.value
            if m.kind == "DELETE":
                t.delete_service(key)
            else:
                t.set_service(svc)
        elif m.resource == SLICES:
            if m.kind == "DELETE":
                t.delete_slice(m.value[0])
            else:
                t.set_slice(*m.value)
        elif m.resource == NODE:
            t.set_node(None if m.kind == "DELETE" else m.value[1])

    # ---- syncing
    def sync(self, kind: Sync = Sync.FULL) -> bool:
        """Brings the interface to the decision; True on success. Before the first full picture, only
        renews what is there."""
        started = now = self.clock()
        try:
            if len(self.synced) < 3:
                self._keep_what_is_there(now)
                if not self._ready_sent:
                    adopted = sum(1 for ip in self.present if self.config.in_prefix(ip))
                    self._notify(f"holding {adopted} adopted addresses; waiting for the API")
                return True
            if self.sync_count == 0:
                kind = Sync.FULL  # the first sync with the full picture
            if kind is Sync.FULL:
                self._sync_full(now)
            else:
                ips = self.tracker.update() | self._dirty_ips
                self._dirty_ips = set()
                self._collect_duplicates()
                self._apply(plan(self.placement, self.present, self.config, now, ips))
                self._hold(ips)
        except Exception:
            log.exception("sync failed; retrying with a full sync")
            self._needs_dump = True
            return False
        self._account(started, kind)
        return True

    def _dump(self) -> None:
        if self._needs_dump:
            self.present = self.table.dump()
            self._duplicates = set(self.table.duplicates)
            self._needs_dump = False
        self._dirty_ips = set()
        self._renewals.clear()

    def _collect_duplicates(self) -> None:
        """Second copies of an address on another of our interfaces (a person, or an older agent): gone."""
        for ip, interface in sorted(self._duplicates):
            self.table.remove(ip, interface)
            self.metrics.withdrawals.labels(STRAY).inc()
            where = self.present[ip].interface if ip in self.present else "none"
            log.info("collecting stray %s on %s: it is held on %s", ip, interface, where)
        self._duplicates.clear()

    def _keep_what_is_there(self, now: float) -> None:
        """No full picture yet (Services, EndpointSlices and the Node not each listed once): remove nothing,
        add nothing, and renew the lifetimes of what is there, so that it expires only if the agent dies."""
        self._dump()
        ours = {ip: have.interface for ip, have in self.present.items() if self.config.in_prefix(ip)}
        self._renewals.extend(plan(ours, self.present, self.config, now).renew)

    def _sync_full(self, now: float) -> None:
        self._dump()
        self.tracker.update()
        self._collect_duplicates()
        wanted = self.tracker.announced
        if self.sync_count == 0:
            for ip in sorted(wanted & self.present.keys()):
                log.info("adopting %s%s; already on %s", ip, self._why(ip), self.present[ip].interface)
        p = plan(self._desired(), self.present, self.config, now)
        self._renewals.extend(p.renew)
        p.renew = []
        self._apply(p)
        self.held = wanted & self.present.keys()
        self._held_v6 = sum(1 for ip in self.held if ":" in ip)

    def _desired(self) -> dict[str, str]:
        """Every announced IP and its interface, as a plain dict: a full plan looks each one up, and a
        dict does that several times faster than ``placement``."""
        if not self.config.weight_classes:
            return dict.fromkeys(self.tracker.announced, self.config.interface)
        return {ip: self.interface_for(ip) for ip in self.tracker.announced}

    def _hold(self, ips: Iterable[str]) -> None:
        """Keeps ``held`` (and its IPv6 count) up to date for the IPs a sync of changes touched."""
        for ip in ips:
            now_held = ip in self.tracker.announced and ip in self.present
            if now_held != (ip in self.held):
                (self.held.add if now_held else self.held.discard)(ip)
                if ":" in ip:
                    self._held_v6 += 1 if now_held else -1

    def _renew_some(self) -> None:
        """Renews the lifetimes of up to RENEW_BATCH addresses that are still wanted and present."""
        batch = [self._renewals.popleft() for _ in range(min(RENEW_BATCH, len(self._renewals)))]
        still = [
            (ip, interface)
            for ip, interface in batch
            if (have := self.present.get(ip)) is not None
            and have.interface == interface
            and (len(self.synced) < 3 or ip in self.tracker.announced)
        ]
        try:
            self._set(still)
        except Exception:
            log.exception("renewing lifetimes failed; retrying with a full sync")
            self._needs_dump = True
            self._renewals.clear()
            self.runner.done(Sync.FULL, False)

    def _set(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Adds or renews (ip, interface) pairs, many to a netlink datagram, and records them as present.
        Raises OSError naming those the kernel refused, after recording the others."""
        lifetime = self.config.address_lifetime
        by_interface: dict[str, list[str]] = {}
        for ip, interface in pairs:
            by_interface.setdefault(interface, []).append(ip)
        refused: dict[str, int] = {}
        for interface, ips in by_interface.items():
            failed = self.table.set_many(ips, lifetime, interface)
            expires = Present(self.clock() + lifetime if lifetime else None, interface)
            for ip in ips:
                if ip not in failed:
                    self.present[ip] = expires
            refused.update(failed)
        if refused:
            raise OSError(
                "the kernel refused "
                + ", ".join(f"{ip} ({os.strerror(code)})" for ip, code in sorted(refused.items()))
            )

    def _account(self, started: float, kind: Sync) -> None:
        m = self.metrics
        end = self.clock()
        m.reconcile.labels(kind.value).observe(end - started)
        if self._batch_start is not None:
            m.event_to_apply.observe(end - self._batch_start)
            self._batch_start = None
        m.addresses.labels("ipv4").set(len(self.held) - self._held_v6)
        m.addresses.labels("ipv6").set(self._held_v6)
        m.last_sync.set(time.time())
        self.sync_count += 1
        if self.sync_count == 1:
            log.info("initial sync done: holding %d addresses", len(self.held))
            self._notify(f"holding {len(self.held)} addresses")

    def _notify(self, status: str) -> None:
        """READY=1 means: the agent runs and holds what it adopted from the interface. It is sent at the
        first read of the interface, whether or not the API answers (a start must not wait for the
        apiserver: systemd would fail it after TimeoutStartSec), and the status follows what it holds."""
        if self._ready_sent:
            self.notifier.send(f"STATUS={status}")
        else:
            self.notifier.send("READY=1", f"STATUS={status}")
            self._ready_sent = True

    def _apply(self, p: Plan) -> None:
        moving = {ip for ip, _ in p.add} & {ip for ip, _ in p.remove}
        for ip, interface in p.remove:  # first: a move deletes from the old interface before it adds
            self.table.remove(ip, interface)
            self.present.pop(ip, None)
            self._weigh(ip, None)
            if ip in moving:
                continue
            if ip in self.held:
                why = self._why(ip)
                self.metrics.withdrawals.labels(why.reason).inc()
                log.info("forfeiting %s%s", ip, why)
                self._event(why, "Withdrawn", f"{self.config.node_name} withdrew {ip}: {why.detail}")
            else:
                self.metrics.withdrawals.labels(STRAY).inc()
                log.info("collecting stray %s: no Service of ours wants it", ip)
        self._set(p.add + p.renew)
        for ip, interface in p.add:
            self._weigh(ip, interface)
        for ip, interface in p.add:
            why = self._why(ip)
            if ip in moving:
                self._moved[ip] = self.clock()
                self.metrics.moves.inc()
                log.info("moving %s to %s%s", ip, interface, why)
            elif ip in self.held:
                self.metrics.repairs.inc()
                self.metrics.announcements.labels(REPAIR).inc()
                log.warning("restoring %s%s; it was removed by someone else", ip, why)
            else:
                self.metrics.announcements.labels(why.reason).inc()
                log.info("assuming %s%s", ip, why)
                self._event(why, "Announced", f"{self.config.node_name} announces {ip}: {why.detail}")

    def _weigh(self, ip: str, interface: str | None) -> None:
        """The weight gauge of ``ip``: its class on a class interface, no sample elsewhere."""
        if not self.config.weight_classes:
            return
        if interface is not None and interface != self.config.interface:
            self.metrics.weight.labels(ip).set(int(interface.removeprefix(CLASS_PREFIX)))
        else:
            with contextlib.suppress(KeyError):
                self.metrics.weight.remove(ip)

    def interface_for(self, ip: str) -> str:
        """Where an announced IP goes: the agent's interface, or with weighted anycast the interface of its
        weight class (a Local Service's local ready endpoints, at most the number of classes; Cluster IPs
        stay on the agent's interface). A move between classes waits until WEIGHT_HOLD seconds after the
        IP's last move, since every change of weights moves flows at the router; the full sync that comes
        next after that makes it."""
        classes = self.config.weight_classes
        if not classes:
            return self.config.interface
        weight = self.tracker.weights.get(ip, 0)
        want = self.config.interface if not weight else self.config.class_interface(weight)
        have = self.present.get(ip)
        if (
            have is not None
            and have.interface != want
            and self.config.interface not in (have.interface, want)
            and self.clock() - self._moved.get(ip, -WEIGHT_HOLD) < WEIGHT_HOLD
        ):
            return have.interface
        return want

    def _why(self, ip: str) -> Why:
        t = self.tracker
        d = t.explain(ip)
        if d is not None:
            key = next((k for k in d.services if t.decisions[k].announce == d.announce), d.services[0])
            return Why(key, d.reason, d.detail)
        gone = t.released.get(ip)
        if gone is not None:
            return Why(gone, NOT_WANTED, "the Service is gone, not ours, or has another IP")
        return Why(None, STRAY, "no Service of ours wants it")

    def _event(self, why: Why, reason: str, message: str) -> None:
        svc = self.tracker.services.get(why.key) if why.key else None
        if self.writer is not None and svc is not None:
            self.writer.event(svc.key, svc.uid, "Normal", reason, message)

    def withdraw_all(self) -> None:
        """On exit: removes every host-length address of ours (inside the prefixes) from the interface."""
        try:
            present = self.table.dump()
        except Exception:
            log.exception("could not read the interface to withdraw")
            return
        for ip, have in sorted(
            [*present.items(), *((ip, Present(None, i)) for ip, i in self.table.duplicates)]
        ):
            if self.config.in_prefix(ip):
                try:
                    self.table.remove(ip, have.interface)
                    self.metrics.withdrawals.labels("stopping").inc()
                    log.info("withdrawing %s: the agent is stopping", ip)
                except Exception:
                    log.exception("could not withdraw %s", ip)
