"""Applying decisions to the interface: a pure diff (``plan``) and the netlink calls that carry it out.

Only this module (and ``rtnl``, its codec) talks netlink. Whatever the inputs, a plan never
touches an address outside the configured prefixes or one that is not host-length (/32, /128).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from . import rtnl
from .config import Config
from .rtnl import parse_address

log = logging.getLogger(__name__)


def host_len(ip: str) -> int:
    return 128 if ":" in ip else 32


@dataclass(frozen=True, slots=True)
class Present:
    """A host-length address on one of our interfaces."""

    expires: float | None
    """``time.monotonic()`` at which its valid lifetime ends; None when permanent."""
    interface: str = "lo"
    """Which of our interfaces holds it."""


@dataclass(slots=True)
class Plan:
    """(ip, interface) pairs. A move to another interface is a removal from the old one and an add on the
    new one; the removals are carried out first (zebra 8.4 keeps a stale route otherwise)."""

    add: list[tuple[str, str]] = field(default_factory=list)
    renew: list[tuple[str, str]] = field(default_factory=list)
    remove: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.renew or self.remove)


def plan(
    desired: Mapping[str, str],
    present: Mapping[str, Present],
    config: Config,
    now: float,
    ips: Iterable[str] | None = None,
) -> Plan:
    """What to add, renew and remove so that exactly ``desired`` (IP -> interface) is held inside our
    prefixes.

    ``ips``: plan only these addresses (an incremental sync, O(len(ips))); None: every desired and present
    address (a full sync). Additions and removals come sorted; renewals in no particular order (sorting
    thousands of them would be most of a full sync's cost)."""
    p = Plan()
    lifetime = config.address_lifetime
    renew_before = now + lifetime - config.renew_after  # an expiry before this is renewed
    in_prefix = config.in_prefix
    for ip in desired.keys() | present.keys() if ips is None else ips:
        if not in_prefix(ip):
            continue  # decide() never asks for this, nor removes it; the check here makes it impossible
        have = present.get(ip)
        want = desired.get(ip)
        if want is None:
            if have is not None:
                p.remove.append((ip, have.interface))
        elif have is None:
            p.add.append((ip, want))
        elif have.interface != want:
            p.remove.append((ip, have.interface))
            p.add.append((ip, want))
        elif lifetime == 0:
            if have.expires is not None:
                p.renew.append((ip, want))
        elif have.expires is None or have.expires < renew_before:
            p.renew.append((ip, want))
    p.add.sort()
    p.remove.sort()
    return p


class AddressTable(Protocol):
    """The host-length addresses of the agent's interfaces: its interface (lo), and with weighted anycast
    the weight-class interfaces too."""

    interfaces: tuple[str, ...]
    duplicates: list[tuple[str, str]]
    """After ``dump()``: (ip, interface) of each address also held on an earlier interface of ours."""

    def dump(self) -> dict[str, Present]: ...
    def set_many(self, ips: list[str], lifetime: int, interface: str) -> dict[str, int]: ...
    def remove(self, ip: str, interface: str) -> None: ...
    def close(self) -> None: ...


class MemoryTable:
    """Interfaces that exist only in memory: for ``--dry-run`` (never touches netlink) and unit tests."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, interfaces: tuple[str, ...] = ("lo",)
    ) -> None:
        self.clock = clock
        self.interfaces = interfaces
        self.duplicates: list[tuple[str, str]] = []
        self.addresses: dict[str, Present] = {}

    def dump(self) -> dict[str, Present]:
        return dict(self.addresses)

    def set(self, ip: str, lifetime: int, interface: str = "lo") -> None:
        self.addresses[ip] = Present(self.clock() + lifetime if lifetime else None, interface)

    def set_many(self, ips: list[str], lifetime: int, interface: str = "lo") -> dict[str, int]:
        for ip in ips:
            self.set(ip, lifetime, interface)
        return {}

    def remove(self, ip: str, interface: str = "lo") -> None:
        if ip in self.addresses and self.addresses[ip].interface == interface:
            del self.addresses[ip]

    def close(self) -> None:
        pass


class InterfaceMissing(RuntimeError):
    pass


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


def _index(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


class NetlinkTable:
    """The real interfaces, through ``rtnl``: batched writes, the dump, the monitor; pyroute2 only makes
    the weight-class interfaces."""

    def __init__(self, ifname: str, classes: tuple[str, ...] = (), *, create: bool = True) -> None:
        """``classes``: weight-class interfaces, made if missing (``create``; else those missing are left
        out: a read-only look, as ``l3lb status`` takes)."""
        index = _index(ifname)
        if index is None:
            raise InterfaceMissing(f"interface {ifname!r} does not exist")
        self.indices = {ifname: index}
        for name in classes:
            if create:
                self.indices[name] = self._class_interface(name)
            elif (found := _index(name)) is not None:
                self.indices[name] = found
        self.interfaces = tuple(self.indices)
        self._names = {i: n for n, i in self.indices.items()}
        self.duplicates: list[tuple[str, str]] = []
        self.requests = rtnl.Requests()
        self.echoes = Echoes()
        self.monitor_error: str | None = None
        """Why the monitor is not following the interfaces right now (for /healthz), or None."""
        self._monitor_thread: threading.Thread | None = None
        self.monitoring = threading.Event()
        """Set once the monitor listens (and again after each restart): changes from then on are seen."""

    @staticmethod
    def _class_interface(name: str) -> int:
        """The index of weight-class interface ``name``, made if missing: a ``dummy``, or where the kernel
        has no dummy driver a veth pair with both ends here (the peer named ``<name>p``). Either way up."""
        from pyroute2 import IPRoute, NetlinkError  # loaded only here: it costs the agent ~11 MiB

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                try:
                    ipr.link("add", ifname=name, kind="dummy")
                except NetlinkError:
                    ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}p"})
                    ipr.link("set", index=ipr.link_lookup(ifname=f"{name}p")[0], state="up")
                    log.info("made weight-class interface %s (a veth pair: no dummy driver here)", name)
                else:
                    log.info("made weight-class interface %s (dummy)", name)
                found = ipr.link_lookup(ifname=name)
            ipr.link("set", index=found[0], state="up")
            return int(found[0])

    def dump(self) -> dict[str, Present]:
        """The host-length addresses on our interfaces. An address on two of them counts on the first (in
        ``interfaces`` order); the later copies are listed in ``duplicates``."""
        now = time.monotonic()
        found: dict[str, list[rtnl.Address]] = {name: [] for name in self.indices}
        for addr in self.requests.addresses():
            name = self._names.get(addr.index)
            if name is not None and addr.prefixlen == host_len(addr.ip):
                found[name].append(addr)
        out: dict[str, Present] = {}
        self.duplicates = []
        for name, addrs in found.items():
            for addr in addrs:
                if addr.ip in out:
                    self.duplicates.append((addr.ip, name))
                else:
                    out[addr.ip] = Present(None if addr.valid == rtnl.FOREVER else now + addr.valid, name)
        return out

    def set_many(self, ips: list[str], lifetime: int, interface: str) -> dict[str, int]:
        """Adds or renews ``ips`` on ``interface`` in batches; returns {ip: errno} of those refused."""
        index = self.indices[interface]
        for ip in ips:
            self.echoes.expect("add", ip)
        try:
            failed = self.requests.run((rtnl.RTM_NEWADDR, index, ip, lifetime) for ip in ips)
        except BaseException:
            for ip in ips:
                self.echoes.forget("add", ip)
            raise
        for ip in failed:
            self.echoes.forget("add", ip)
        return failed

    def remove(self, ip: str, interface: str) -> None:
        self.echoes.expect("del", ip)
        try:
            failed = self.requests.run([(rtnl.RTM_DELADDR, self.indices[interface], ip, 0)])
        except BaseException:
            self.echoes.forget("del", ip)
            raise
        if ip in failed:
            self.echoes.forget("del", ip)
            if failed[ip] not in rtnl.GONE:
                raise rtnl.RequestError(failed[ip], f"cannot remove {ip}: {os.strerror(failed[ip])}")

    def close(self) -> None:
        self.requests.close()

    def monitor_health(self) -> str | None:
        """None while the monitor follows the interface; else what is wrong."""
        if self._monitor_thread is not None and not self._monitor_thread.is_alive():
            return "netlink monitor thread ended"
        return self.monitor_error

    def monitor(self, on_change: Callable[[str, str, Present | None], None]) -> threading.Thread:
        """Follows our interfaces' address events in a thread: ``on_change("add"|"del", ip, present)`` (the
        interface in ``present``) for changes made by someone else (echoes of our own writes are dropped),
        ``on_change("lost", "", None)`` after a restart of the monitor, which may have missed events."""
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
                        for kind, _, _, payload in rtnl.messages(sock.recv(1 << 16)):
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
        if addr is None or addr.index not in self._names or addr.prefixlen != host_len(addr.ip):
            return
        kind = "del" if addr.kind == rtnl.RTM_DELADDR else "add"
        if self.echoes.consume(kind, addr.ip):
            return
        expires = None if addr.valid == rtnl.FOREVER or kind == "del" else time.monotonic() + addr.valid
        on_change(kind, addr.ip, Present(expires, self._names[addr.index]))
