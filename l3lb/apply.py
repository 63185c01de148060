"""Applying decisions to the interface: a pure diff (``plan``) and the netlink calls that carry it out.

Only this module (and ``rtnl``, its hot-path codec) talks netlink. Whatever the inputs, a plan never
touches an address outside the configured prefixes or one that is not host-length (/32, /128).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute

from . import rtnl
from .config import Config
from .rtnl import parse_address

log = logging.getLogger(__name__)


def host_len(ip: str) -> int:
    return 128 if ":" in ip else 32


@dataclass(frozen=True, slots=True)
class Present:
    """A host-length address on the interface."""

    expires: float | None
    """``time.monotonic()`` at which its valid lifetime ends; None when permanent."""


@dataclass(slots=True)
class Plan:
    add: list[str] = field(default_factory=list)
    renew: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.renew or self.remove)


def plan(
    desired: set[str],
    present: Mapping[str, Present],
    config: Config,
    now: float,
    ips: Iterable[str] | None = None,
) -> Plan:
    """What to add, renew and remove so that exactly ``desired`` is held inside our prefixes.

    ``ips``: plan only these addresses (an incremental sync, O(len(ips))); None: every desired and present
    address (a full sync)."""
    p = Plan()
    lifetime = config.address_lifetime
    for ip in sorted(desired | present.keys() if ips is None else ips):
        if not config.in_prefix(ip):
            continue  # decide() never asks for this, nor removes it; the check here makes it impossible
        have = present.get(ip)
        if ip not in desired:
            if have is not None:
                p.remove.append(ip)
        elif have is None:
            p.add.append(ip)
        elif lifetime == 0:
            if have.expires is not None:
                p.renew.append(ip)
        elif have.expires is None or have.expires - now < lifetime - config.renew_after:
            p.renew.append(ip)
    return p


class AddressTable(Protocol):
    """The host-length addresses of one interface."""

    def dump(self) -> dict[str, Present]: ...
    def set(self, ip: str, lifetime: int) -> None: ...
    def set_many(self, ips: list[str], lifetime: int) -> dict[str, int]: ...
    def remove(self, ip: str) -> None: ...
    def close(self) -> None: ...


class MemoryTable:
    """An interface that exists only in memory: for ``--dry-run`` (never touches netlink) and unit tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.addresses: dict[str, Present] = {}

    def dump(self) -> dict[str, Present]:
        return dict(self.addresses)

    def set(self, ip: str, lifetime: int) -> None:
        self.addresses[ip] = Present(self.clock() + lifetime if lifetime else None)

    def set_many(self, ips: list[str], lifetime: int) -> dict[str, int]:
        for ip in ips:
            self.set(ip, lifetime)
        return {}

    def remove(self, ip: str) -> None:
        self.addresses.pop(ip, None)

    def close(self) -> None:
        pass


class InterfaceMissing(RuntimeError):
    pass


def _present(msg: object, now: float) -> tuple[str, Present] | None:
    """(ip, Present) of a host-length address message, or None for other prefix lengths."""
    ip = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")  # type: ignore[attr-defined]
    if not ip or msg["prefixlen"] != host_len(ip):  # type: ignore[index]
        return None
    valid = (msg.get("IFA_CACHEINFO") or {}).get("ifa_valid", rtnl.FOREVER)  # type: ignore[attr-defined]
    return str(ipaddress.ip_address(ip)), Present(None if valid == rtnl.FOREVER else now + valid)


ECHO_WITHIN = 5.0
"""Seconds within which the kernel's notification of one of our own writes (its echo) is expected."""


class Echoes:
    """The notifications our own writes will cause, so that the monitor can drop them: counted per
    (kind, ip), each expected for ``ECHO_WITHIN`` seconds. Written by the sync loop, read by the monitor."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._expected: dict[tuple[str, str], list[float]] = {}

    def expect(self, kind: str, ip: str) -> None:
        with self._lock:
            self._expected.setdefault((kind, ip), []).append(self.clock() + ECHO_WITHIN)

    def forget(self, kind: str, ip: str) -> None:
        """The write did not happen (it failed, or there was nothing to remove): no echo will come."""
        with self._lock:
            deadlines = self._expected.get((kind, ip))
            if deadlines:
                deadlines.pop()
                if not deadlines:
                    del self._expected[(kind, ip)]

    def consume(self, kind: str, ip: str) -> bool:
        """True if this notification is the echo of one of our writes (and counts it as seen)."""
        now = self.clock()
        with self._lock:
            deadlines = [d for d in self._expected.pop((kind, ip), []) if d >= now]
            if not deadlines:
                return False
            deadlines.pop(0)
            if deadlines:
                self._expected[(kind, ip)] = deadlines
            return True


class NetlinkTable:
    """The real interface: writes and the monitor through ``rtnl`` (batched, struct-coded), the interface
    lookup and dumps through pyroute2."""

    def __init__(self, ifname: str) -> None:
        self.ipr = IPRoute()
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            self.ipr.close()
            raise InterfaceMissing(f"interface {ifname!r} does not exist")
        self.index: int = found[0]
        self.ifname = ifname
        self.requests = rtnl.Requests()
        self.echoes = Echoes()
        self.monitor_error: str | None = None
        """Why the monitor is not following the interface right now (for /healthz), or None."""
        self._monitor_thread: threading.Thread | None = None
        self.monitoring = threading.Event()
        """Set once the monitor listens (and again after each restart): changes from then on are seen."""

    def dump(self) -> dict[str, Present]:
        now = time.monotonic()
        out = {}
        for msg in self.ipr.get_addr(index=self.index):
            item = _present(msg, now)
            if item:
                out[item[0]] = item[1]
        return out

    def set(self, ip: str, lifetime: int) -> None:
        failed = self.set_many([ip], lifetime)
        if failed:
            raise rtnl.RequestError(failed[ip], f"cannot add {ip}: {os.strerror(failed[ip])}")

    def set_many(self, ips: list[str], lifetime: int) -> dict[str, int]:
        """Adds or renews ``ips`` in batches; returns {ip: errno} of those the kernel refused."""
        for ip in ips:
            self.echoes.expect("add", ip)
        try:
            failed = self.requests.run((rtnl.RTM_NEWADDR, self.index, ip, lifetime) for ip in ips)
        except BaseException:
            for ip in ips:
                self.echoes.forget("add", ip)
            raise
        for ip in failed:
            self.echoes.forget("add", ip)
        return failed

    def remove(self, ip: str) -> None:
        self.echoes.expect("del", ip)
        try:
            failed = self.requests.run([(rtnl.RTM_DELADDR, self.index, ip, 0)])
        except BaseException:
            self.echoes.forget("del", ip)
            raise
        if ip in failed:
            self.echoes.forget("del", ip)
            if failed[ip] not in rtnl.GONE:
                raise rtnl.RequestError(failed[ip], f"cannot remove {ip}: {os.strerror(failed[ip])}")

    def close(self) -> None:
        self.requests.close()
        self.ipr.close()

    def monitor_health(self) -> str | None:
        """None while the monitor follows the interface; else what is wrong."""
        if self._monitor_thread is not None and not self._monitor_thread.is_alive():
            return "netlink monitor thread ended"
        return self.monitor_error

    def monitor(self, on_change: Callable[[str, str, Present | None], None]) -> threading.Thread:
        """Follows the interface's address events in a thread: ``on_change("add"|"del", ip, present)`` for
        changes made by someone else (echoes of our own writes are dropped), ``on_change("lost", "", None)``
        after a restart of the monitor, which may have missed events."""
        self._monitor_thread = threading.Thread(
            target=self._monitor, args=(on_change,), name="netlink-monitor", daemon=True
        )
        self._monitor_thread.start()
        return self._monitor_thread

    def _monitor(self, on_change: Callable[[str, str, Present | None], None]) -> None:
        delay = 0.1
        while True:
            try:
                with rtnl.monitor_socket() as sock:
                    self.monitoring.set()
                    if self.monitor_error is not None:
                        self.monitor_error = None
                        on_change("lost", "", None)
                    while True:
                        for kind, _, payload in rtnl.messages(sock.recv(1 << 16)):
                            self._event(parse_address(kind, payload), on_change)
                        delay = 0.1
            except Exception as err:  # whatever it was (ENOBUFS, a parse error...): restart, then re-read
                self.monitoring.clear()
                self.monitor_error = f"netlink monitor restarting after {type(err).__name__}: {err}"
                log.warning("%s", self.monitor_error)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _event(
        self, addr: rtnl.Address | None, on_change: Callable[[str, str, Present | None], None]
    ) -> None:
        if addr is None or addr.index != self.index or addr.prefixlen != host_len(addr.ip):
            return
        kind = "del" if addr.kind == rtnl.RTM_DELADDR else "add"
        if self.echoes.consume(kind, addr.ip):
            return
        expires = None if addr.valid == rtnl.FOREVER else time.monotonic() + addr.valid
        on_change(kind, addr.ip, Present(expires) if kind == "add" else None)
