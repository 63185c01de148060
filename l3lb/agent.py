"""The agent's loop: watch events in, one sync out. The sync is the only writer to the interface.

Watch threads and the netlink monitor only put messages on one queue. The loop drains the queue (so a
burst of events costs one sync), records each message in the tracker, and syncs once the Services,
EndpointSlices and this Node have each been listed at least once: never act on half a picture. A periodic
resync re-reads the interface, renews address lifetimes and collects strays; a failed sync is retried.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .allocator import Allocator
from .apply import AddressTable, NetlinkTable, Plan, Present, plan
from .config import Config
from .decide import NOT_WANTED
from .metrics import Metrics
from .model import NODE, SERVICES, SLICES, Key, Service, fmt_key
from .systemd import Notifier
from .tracker import Tracker

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0
LOOP_STUCK_AFTER = 30.0
STRAY = "stray"
REPAIR = "repair"


class Writer(Protocol):
    def status(self, key: Key, ips: tuple[str, ...]) -> None: ...
    def event(self, key: Key, uid: str, kind: str, reason: str, message: str) -> None: ...


class Watched(Protocol):
    resource: str
    last_progress: float
    stuck_after: float


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
    ) -> None:
        self.config = config
        self.table = table
        self.writer = writer
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier({})
        self.allocator = allocator
        self.leader = False
        self.clock = clock
        self.tracker = Tracker(config)
        self.queue: queue.Queue[tuple[str, str, Any, float]] = queue.Queue()
        self.synced: set[str] = set()
        self.present: dict[str, Present] = {}
        self.held: set[str] = set()
        """IPs this agent holds and still wants: re-adding one is a repair."""
        self.sync_count = 0
        self.watched: Sequence[Watched] = ()
        self.last_loop = clock()
        self._needs_sync = False
        self._needs_dump = True
        self._next_resync = 0.0
        self._next_ping = 0.0
        self._batch_start: float | None = None
        self._allocate = False

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
        return None

    # ---- inputs (called from other threads)
    def sink(self, resource: str, kind: str, obj: Any) -> None:
        self.queue.put((resource, kind, obj, self.clock()))

    def on_netlink(self, kind: str, ip: str, present: Present | None) -> None:
        self.queue.put(("netlink", kind, (ip, present), self.clock()))

    def on_leader(self, leader: bool) -> None:
        self.queue.put(("leader", "", leader, self.clock()))

    def stop(self, stop: threading.Event) -> None:
        """Ends ``run()`` now (from a signal handler): sets ``stop`` and wakes the loop."""
        stop.set()
        self.queue.put(("stop", "", None, self.clock()))

    # ---- the loop
    def run(self, stop: threading.Event) -> None:
        if isinstance(self.table, NetlinkTable):
            self.table.monitor(self.on_netlink)
        while not stop.is_set():
            self.last_loop = now = self.clock()
            self._ping(now)
            timeout = max(0.0, self._next_resync - now)
            try:
                item = self.queue.get(timeout=min(timeout, 0.5))
            except queue.Empty:
                pass
            else:
                self._record(*item)
                while True:
                    try:
                        self._record(*self.queue.get_nowait())
                    except queue.Empty:
                        break
            if stop.is_set():
                break
            if self.clock() >= self._next_resync:
                self._needs_dump = self._needs_sync = self._allocate = True
            if self._needs_sync or self.tracker.pending:
                self.sync()
        self.notifier.send("STOPPING=1")

    def _ping(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_ping:
            self.notifier.send("WATCHDOG=1")
            self._next_ping = now + interval

    def _record(self, resource: str, kind: str, obj: Any, at: float) -> None:
        t = self.tracker
        if resource == "stop":
            return
        if resource == "leader":
            self.leader = obj
            self.metrics.leader.set(1 if obj else 0)
            self._allocate = self._needs_sync = bool(obj)  # a new leader rebuilds from the Services' status
            return
        if self._batch_start is None:
            self._batch_start = at
        if resource == "netlink":
            ip, present = obj
            if kind == "resync":
                self._needs_dump = self._needs_sync = True
            elif kind == "del":
                if self.present.pop(ip, None) is not None and ip in t.announced:
                    self._needs_sync = True
            elif kind == "add" and present is not None:
                self.present[ip] = present
                if ip not in t.announced and self.config.in_prefix(ip):
                    self._needs_sync = True  # a stray: collect it
            return
        if kind == "REPLACE":
            if resource == SERVICES:
                t.replace_services(obj)
                self._allocate = True
            elif resource == SLICES:
                t.replace_slices(obj)
            else:
                t.set_node(obj[0][1] if obj else None)
            if resource not in self.synced:
                log.info("initial list of %s done (%d objects)", resource, len(obj))
            self.synced.add(resource)
        elif resource == SERVICES:
            key, svc = obj
            if kind == "DELETE":
                self._allocate |= t.delete_service(key)
                self._release(svc)
            else:
                if t.set_service(svc):
                    self._allocate = True
                    if self.leader and self.allocator is not None:
                        self.allocator.observe(svc)
        elif resource == SLICES:
            t.delete_slice(obj[0]) if kind == "DELETE" else t.set_slice(*obj)
        elif resource == NODE:
            t.set_node(None if kind == "DELETE" else obj[1])

    def sync(self) -> None:
        """Brings the interface to the decision. Before the first full picture, only renews what is there."""
        started = now = self.clock()
        self._next_resync = now + self.resync_interval
        self._needs_sync = False
        try:
            if self._needs_dump:
                self.present = self.table.dump()
                self._needs_dump = False
            if len(self.synced) < 3:
                # No full picture yet (start-up, or the apiserver is unreachable): keep what is there.
                self._apply(
                    plan(
                        {ip for ip in self.present if self.config.in_prefix(ip)},
                        self.present,
                        self.config,
                        now,
                    )
                )
                return
            self.tracker.update()
            wanted = self.tracker.announced
            if self.sync_count == 0:
                for ip in sorted(wanted & self.present.keys()):
                    log.info("adopting %s%s; already on the interface", ip, self._why(ip))
            self._apply(plan(wanted, self.present, self.config, now))
            self.held = wanted & self.present.keys()
        except Exception:
            log.exception("sync failed; retrying in %.0fs", RETRY_INTERVAL)
            self._needs_dump = True
            self._next_resync = now + RETRY_INTERVAL
            return
        if self._allocate and self.leader and self.allocator is not None:
            self.allocator.run(self.tracker.services)
        self._allocate = False
        self._account(started)

    def _account(self, started: float) -> None:
        m = self.metrics
        end = self.clock()
        m.reconcile.observe(end - started)
        if self._batch_start is not None:
            m.event_to_apply.observe(end - self._batch_start)
            self._batch_start = None
        v6 = sum(1 for ip in self.held if ":" in ip)
        m.addresses.labels("ipv4").set(len(self.held) - v6)
        m.addresses.labels("ipv6").set(v6)
        m.last_sync.set(time.time())
        self.sync_count += 1
        if self.sync_count == 1:
            log.info("initial sync done: holding %d addresses", len(self.held))
            self.notifier.send("READY=1", f"STATUS=holding {len(self.held)} addresses")

    def _apply(self, p: Plan) -> None:
        lifetime = self.config.address_lifetime
        for ip in p.add + p.renew:
            self.table.set(ip, lifetime)
            self.present[ip] = Present(self.clock() + lifetime if lifetime else None)
        for ip in p.add:
            why = self._why(ip)
            if ip in self.held:
                self.metrics.repairs.inc()
                self.metrics.announcements.labels(REPAIR).inc()
                log.warning("restoring %s%s; it was removed by someone else", ip, why)
            else:
                self.metrics.announcements.labels(why.reason).inc()
                log.info("assuming %s%s", ip, why)
                self._event(why, "Announced", f"{self.config.node_name} announces {ip}: {why.detail}")
        for ip in p.remove:
            self.table.remove(ip)
            self.present.pop(ip, None)
            if ip in self.held:
                why = self._why(ip)
                self.metrics.withdrawals.labels(why.reason).inc()
                log.info("forfeiting %s%s", ip, why)
                self._event(why, "Withdrawn", f"{self.config.node_name} withdrew {ip}: {why.detail}")
            else:
                self.metrics.withdrawals.labels(STRAY).inc()
                log.info("collecting stray %s: no Service of ours wants it", ip)

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

    def _release(self, svc: Service) -> None:
        """A Service that stopped being a LoadBalancer keeps its status: the leader clears what it wrote."""
        if (
            self.leader
            and self.writer is not None
            and not svc.is_load_balancer
            and any(self.config.in_prefix(ip) for ip in svc.ingress_ips)
        ):
            log.info(
                "releasing %s of %s: no longer a LoadBalancer", ", ".join(svc.ingress_ips), fmt_key(svc.key)
            )
            self.writer.status(svc.key, ())

    def withdraw_all(self) -> None:
        """On exit: removes every host-length address of ours (inside the prefixes) from the interface."""
        try:
            present = self.table.dump()
        except Exception:
            log.exception("could not read the interface to withdraw")
            return
        for ip in sorted(present):
            if self.config.in_prefix(ip):
                try:
                    self.table.remove(ip)
                    self.metrics.withdrawals.labels("stopping").inc()
                    log.info("withdrawing %s: the agent is stopping", ip)
                except Exception:
                    log.exception("could not withdraw %s", ip)
