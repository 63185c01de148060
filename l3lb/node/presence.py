"""What is on the agent's interfaces: a change tracker for the node side, as ``Tracker`` is for the API side.

``present`` (IP -> its interface and expiry) follows the kernel's address notifications, which the monitor
thread hands to ``notified``; that drops the echoes of our own requests (IPv4: the kernel stamps them with
our socket's port id; IPv6: expected per kind, IP and interface for a few seconds) and puts the rest in the
loop's inbox. The interfaces are read again at the start, as soon as the monitor says it lost
notifications, and every REREAD_EVERY-th full sync. ``update()`` returns the IPs whose presence changed
since the last one, as ``Tracker.update()`` returns those whose decision did: a sync of changes plans just
those.

``apply()`` carries a plan out as one batch of requests: second copies and removals first, a move's
removal and add side by side (one datagram), then adds and renewals. An address the kernel refuses gets a
backoff of its own and is left out of the plans until its retry; the others go through and the sync does
not fail for it. A weight-class interface found missing (ENODEV) is made again and its adds retried.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

from ..backoff import Backoff
from ..config import Config
from ..netlink.tables import GONE, AddressTable, Change, NetlinkTable, Present
from .plan import Plan
from .runner import AddressEvent, Message, MonitorLost

log = logging.getLogger(__name__)

REREAD_EVERY = 6
"""Every 6th full sync (once a minute at the default 10 s) reads the interfaces again, in case the monitor
missed a notification without noticing. Reading 9,000 addresses takes 40 ms in a namespace (1,000: 4.2 ms),
five times a full sync of them: once a minute, 0.07% of a core."""
ECHO_WITHIN = 5.0
"""Seconds within which the kernel's notification of one of our IPv6 requests (its echo) is expected."""
UNAPPLIED_AFTER = 30.0
"""Seconds an address may stay refused before /healthz says so (three full syncs, several retries)."""


class Echoes:
    """The notifications our IPv6 requests will cause (the kernel does not stamp those with our port id),
    so that the monitor can drop them: counted per (kind, IP, interface), each expected for ECHO_WITHIN
    seconds. Written by the loop, read by the monitor thread; forgotten whole when the monitor starts again
    (a new socket never sees the echoes of requests made before it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._expected: dict[tuple[str, str, str], list[float]] = {}

    def expect(self, kind: str, ip: str, interface: str) -> None:
        with self._lock:
            self._expected.setdefault((kind, ip, interface), []).append(self.clock() + ECHO_WITHIN)

    def forget(self, kind: str, ip: str, interface: str) -> None:
        """The request did not change anything (refused, or nothing to remove): no echo will come."""
        with self._lock:
            deadlines = self._expected.get((kind, ip, interface))
            if deadlines:
                deadlines.pop()
                if not deadlines:
                    del self._expected[(kind, ip, interface)]

    def consume(self, kind: str, ip: str, interface: str) -> bool:
        """True if this notification is the echo of one of our requests (and counts it as seen)."""
        now = self.clock()
        key = (kind, ip, interface)
        with self._lock:
            deadlines = [d for d in self._expected.pop(key, []) if d >= now]
            if not deadlines:
                return False
            deadlines.pop(0)
            if deadlines:
                self._expected[key] = deadlines
            return True

    def reset(self) -> None:
        with self._lock:
            self._expected.clear()


@dataclass(slots=True)
class Refusal:
    """An address the kernel refused: retried on a backoff of its own."""

    interface: str
    errno: int
    since: float
    retry_at: float
    backoff: Backoff
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """How one request of a sync went. ``kind``: "add", "renew", "remove", "move" (from ``source``) or
    "duplicate" (a second copy removed); ``errno`` 0 when it was done."""

    kind: str
    ip: str
    interface: str
    errno: int = 0
    source: str | None = None

    @property
    def refused(self) -> bool:
        return self.errno != 0


class Presence:
    """The interfaces' change tracker (see the module): recorded from notifications, read when due, written
    through ``apply()``; the loop asks it what changed, as it asks ``Tracker``."""

    def __init__(
        self,
        config: Config,
        table: AddressTable,
        clock: Callable[[], float] = time.monotonic,
        sink: Callable[[Message], None] = lambda message: None,
    ) -> None:
        self.config = config
        self.table = table
        self.clock = clock
        self.sink = sink
        """Where the monitor's messages go: the loop's inbox."""
        self.present: dict[str, Present] = {}
        self.duplicates: set[tuple[str, str]] = set()
        """(ip, interface) of second copies of an address on another of our interfaces: the next sync
        removes them."""
        self.held: set[str] = set()
        """IPs this agent holds and still wants, as of the last sync: re-adding one is a repair."""
        self.held_v6 = 0
        self.refused: dict[str, Refusal] = {}
        self.echoes = Echoes(clock)
        self._dirty: set[str] = set()
        self._reread = True
        self._full_syncs = 0

    # ---- the monitor thread
    def start_monitor(self) -> None:
        """Follows the interfaces (a real table only), from before the first read: nothing slips between."""
        if isinstance(self.table, NetlinkTable):
            self.table.monitor(self.notified, self.lost)
            self.table.monitoring.wait(5.0)
            self.echoes.reset()  # what was expected before it listened never comes

    def notified(self, kind: str, ip: str, present: Present, ours: bool) -> None:
        """A notification of the monitor: someone else's change goes to the loop, an echo of ours nowhere."""
        if ours or (":" in ip and self.echoes.consume(kind, ip, present.interface)):
            return
        self.sink(AddressEvent(kind, ip, present, self.clock()))

    def lost(self) -> None:
        """The monitor listens again after missing notifications: read the interfaces again, now."""
        self.echoes.reset()
        self.sink(MonitorLost(self.clock()))

    # ---- recording (the loop): O(the message)
    def reread(self) -> None:
        """The next update reads the interfaces again (a lost monitor, a failed sync, the first sync)."""
        self._reread = True

    def record(self, m: AddressEvent, wanted: Container[str]) -> bool:
        """Records someone else's change; True when a sync must look at it (``wanted``: the announced
        IPs): one of ours removed, a stray added, a second copy."""
        have = self.present.get(m.ip)
        where = m.present.interface
        if m.kind == "del":
            self.duplicates.discard((m.ip, where))
            if have is None or have.interface != where:
                return False
            del self.present[m.ip]
            dirty = m.ip in wanted  # ours, removed by someone else: restore it
        elif have is not None and have.interface != where:
            dirty = self.config.in_prefix(m.ip)  # a second copy on another of our interfaces
            if dirty:
                self.duplicates.add((m.ip, where))
            return dirty
        else:
            self.present[m.ip] = m.present
            dirty = m.ip not in wanted and self.config.in_prefix(m.ip)  # a stray: collect it
        if dirty:
            self._dirty.add(m.ip)
        return dirty

    def update(self, full: bool = False) -> set[str]:
        """Reads the interfaces again when due; returns the IPs whose presence changed since the last
        update (by notifications or found by the read), and the refused ones whose retry is due."""
        if full:
            self._full_syncs += 1
            if self._full_syncs >= REREAD_EVERY:
                self._reread = True
        if self._reread:
            self._read()
        touched, self._dirty = self._dirty, set()
        now = self.clock()
        touched.update(ip for ip, r in self.refused.items() if r.retry_at <= now)
        return touched

    def _read(self) -> None:
        before = self.present
        self.present = self.table.dump()
        self.duplicates = set(self.table.duplicates)
        self._reread = False
        self._full_syncs = 0
        changed = before.keys() ^ self.present.keys()
        changed.update(
            ip for ip, p in self.present.items() if ip in before and before[ip].interface != p.interface
        )
        if before and changed:
            log.info(
                "read the interfaces again: %d addresses differ from what the notifications said",
                len(changed),
            )
        self._dirty |= changed

    # ---- applying
    def hold_back(self, p: Plan, touched: Iterable[str] | None) -> Plan:
        """``p`` without the IPs whose refusal is still backing off. A refused IP whose retry is due and
        that the plan no longer changes (``touched``: the IPs planned; None: all) is settled."""
        if not self.refused:
            return p
        now = self.clock()
        waiting = {ip for ip, r in self.refused.items() if r.retry_at > now}
        planned = {ip for ip, _ in p.add} | {ip for ip, _ in p.remove} | {ip for ip, _ in p.renew}
        for ip in [ip for ip in self.refused if ip not in waiting and ip not in planned]:
            if touched is None or ip in touched:
                del self.refused[ip]
        if waiting:
            p = Plan(
                [c for c in p.add if c[0] not in waiting],
                [c for c in p.renew if c[0] not in waiting],
                [c for c in p.remove if c[0] not in waiting],
            )
        return p

    def apply(self, p: Plan) -> list[Done]:
        """Carries out ``p`` (and removes the second copies) as one batch; records what is present now and
        what was refused. Raises OSError only when the requests could not be made at all."""
        moving = {ip: interface for ip, interface in p.remove}
        moving = {ip: moving[ip] for ip, _ in p.add if ip in moving}
        kinds: list[tuple[str, str | None]] = []
        changes: list[Change] = []
        for ip, interface in sorted(self.duplicates):
            changes.append(Change(False, ip, interface))
            kinds.append(("duplicate", None))
        self.duplicates.clear()
        for ip, interface in p.remove:
            if ip not in moving:
                changes.append(Change(False, ip, interface))
                kinds.append(("remove", None))
        for ip, interface in p.add:
            if ip in moving:  # side by side: the table sends them in one datagram
                changes.append(Change(False, ip, moving[ip]))
                kinds.append(("move-out", None))
            changes.append(Change(True, ip, interface))
            kinds.append(("move", moving[ip]) if ip in moving else ("add", None))
        for ip, interface in p.renew:
            changes.append(Change(True, ip, interface))
            kinds.append(("renew", None))
        codes = self._request(changes)
        return self._record_done(changes, kinds, codes)

    def _request(self, changes: list[Change]) -> list[int]:
        """The table's answer to each change; adds that met a missing weight-class interface (ENODEV) are
        tried once more after it is made again."""
        if not changes:
            return []
        for c in changes:
            if ":" in c.ip:
                self.echoes.expect("add" if c.add else "del", c.ip, c.interface)
        codes = self.table.apply(changes, self.config.address_lifetime)
        again = [
            i
            for i, (c, code) in enumerate(zip(changes, codes, strict=True))
            if c.add and code == errno.ENODEV and c.interface != self.config.interface
        ]
        if again:
            for interface in sorted({changes[i].interface for i in again}):
                self.table.ensure(interface)
            for i, code in zip(
                again,
                self.table.apply([changes[i] for i in again], self.config.address_lifetime),
                strict=True,
            ):
                codes[i] = code
        for c, code in zip(changes, codes, strict=True):
            if code and ":" in c.ip:
                self.echoes.forget("add" if c.add else "del", c.ip, c.interface)
        return codes

    def _record_done(
        self, changes: list[Change], kinds: list[tuple[str, str | None]], codes: list[int]
    ) -> list[Done]:
        now = self.clock()
        lifetime = self.config.address_lifetime
        expires = now + lifetime if lifetime else None
        done: list[Done] = []
        for c, (kind, source), code in zip(changes, kinds, codes, strict=True):
            if not c.add and code in GONE:
                code = 0  # nothing there to remove: as good as removed
            if kind == "move-out":
                if not code:
                    self._drop(c.ip, c.interface)
                continue  # reported with its move
            if code:
                self._refuse(c, code, now)
            elif c.add:
                self.present[c.ip] = Present(expires, c.interface)
                self.refused.pop(c.ip, None)
            else:
                if kind != "duplicate":
                    self._drop(c.ip, c.interface)
                self.refused.pop(c.ip, None)
            done.append(Done(kind, c.ip, c.interface, code, source))
        return done

    def _drop(self, ip: str, interface: str) -> None:
        have = self.present.get(ip)
        if have is not None and have.interface == interface:
            del self.present[ip]

    def _refuse(self, c: Change, code: int, now: float) -> None:
        r = self.refused.get(c.ip)
        if r is None or r.interface != c.interface or r.errno != code:
            r = self.refused[c.ip] = Refusal(c.interface, code, now, now, Backoff(initial=1.0, maximum=30.0))
        r.retry_at = now + r.backoff.next()
        r.attempts += 1

    def settle(self, ips: Iterable[str] | None, wanted: set[str]) -> None:
        """``held`` after a sync: the IPs both wanted and present, for ``ips`` (None: all of them)."""
        if ips is None:
            self.held = wanted & self.present.keys()
            self.held_v6 = sum(1 for ip in self.held if ":" in ip)
            return
        for ip in ips:
            now_held = ip in wanted and ip in self.present
            if now_held != (ip in self.held):
                (self.held.add if now_held else self.held.discard)(ip)
                if ":" in ip:
                    self.held_v6 += 1 if now_held else -1

    def withdraw_all(self) -> list[Done]:
        """On exit: removes every host-length address of ours (inside the prefixes) from the interfaces,
        second copies included, in one batch."""
        present = self.table.dump()
        mine = sorted(
            (ip, where)
            for ip, where in [*((ip, p.interface) for ip, p in present.items()), *self.table.duplicates]
            if self.config.in_prefix(ip)
        )
        changes = [Change(False, ip, where) for ip, where in mine]
        codes = self._request(changes)
        return [
            Done("remove", c.ip, c.interface, 0 if code in GONE else code)
            for c, code in zip(changes, codes, strict=True)
        ]

    # ---- health
    def next_retry(self) -> float | None:
        return min((r.retry_at for r in self.refused.values()), default=None)

    def problem(self, now: float) -> str | None:
        """None while the interfaces are followed and no address has stayed refused for UNAPPLIED_AFTER."""
        if isinstance(self.table, NetlinkTable) and (trouble := self.table.monitor_health()):
            return trouble
        oldest = min(self.refused.items(), key=lambda item: item[1].since, default=None)
        if oldest is not None and now - oldest[1].since > UNAPPLIED_AFTER:
            ip, r = oldest
            why = os.strerror(r.errno)
            return f"{ip} on {r.interface} refused by the kernel for {now - r.since:.0f}s: {why}"
        return None
