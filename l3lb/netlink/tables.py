"""The tables that carry changes to the agent's interfaces out: the kernel's, through netlink (batched
requests, the dump, the monitor), or one in memory (dry run, unit tests).

Only this package (these tables and ``rtnl``, their codec) talks netlink. What is on the interfaces, and
when to read them again, is ``node.presence``'s business; the tables only do what they are told and say how
each request went.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import rtnl

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


@dataclass(frozen=True, slots=True)
class Change:
    """One request to a table: add (or renew) ``ip`` on ``interface``, or remove it from there."""

    add: bool
    ip: str
    interface: str


GONE = (*rtnl.GONE, errno.ENODEV)
"""What a removal may meet when the address is not there: nothing to do (ENODEV: its interface is gone)."""


class AddressTable(Protocol):
    """The host-length addresses of the agent's interfaces: its interface (lo), and with weighted anycast
    the weight-class interfaces and the drain interface too."""

    interfaces: tuple[str, ...]
    duplicates: list[tuple[str, str]]
    """After ``dump()``: (ip, interface) of each address also held on an earlier interface of ours."""

    def dump(self) -> dict[str, Present]: ...
    def apply(self, changes: Sequence[Change], lifetime: int) -> list[int]:
        """Carries out ``changes`` in order (adds with ``lifetime`` seconds, 0: permanent); returns the
        errno of each (0: done). Raises OSError only when the requests could not be made at all."""
        ...

    def ensure(self, interface: str) -> bool:
        """Makes the extra ``interface`` (a weight class, the drain) again if missing; True if it had to."""
        ...

    def close(self) -> None: ...


class MemoryTable:
    """Interfaces that exist only in memory: for ``--dry-run`` (never touches netlink) and unit tests.
    ``set`` and ``remove`` are its requests (tests wrap them); ``unlink`` deletes an interface."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, interfaces: tuple[str, ...] = ("lo",)
    ) -> None:
        self.clock = clock
        self.interfaces = interfaces
        self.links = set(interfaces)
        self.duplicates: list[tuple[str, str]] = []
        self.addresses: dict[str, Present] = {}

    def dump(self) -> dict[str, Present]:
        return dict(self.addresses)

    def set(self, ip: str, lifetime: int, interface: str = "lo") -> None:
        if interface not in self.links:
            raise OSError(errno.ENODEV, f"no interface {interface}")
        self.addresses[ip] = Present(self.clock() + lifetime if lifetime else None, interface)

    def remove(self, ip: str, interface: str = "lo") -> None:
        if ip in self.addresses and self.addresses[ip].interface == interface:
            del self.addresses[ip]

    def apply(self, changes: Sequence[Change], lifetime: int) -> list[int]:
        codes = []
        for c in changes:
            try:
                self.set(c.ip, lifetime, c.interface) if c.add else self.remove(c.ip, c.interface)
            except OSError as err:
                if err.errno is None:  # not the kernel's answer to one request: the whole batch failed
                    raise
                codes.append(err.errno)
            else:
                codes.append(0)
        return codes

    def unlink(self, interface: str) -> None:
        self.links.discard(interface)
        self.addresses = {ip: p for ip, p in self.addresses.items() if p.interface != interface}

    def ensure(self, interface: str) -> bool:
        made = interface not in self.links
        self.links.add(interface)
        return made

    def close(self) -> None:
        pass


class InterfaceMissing(RuntimeError):
    pass


def _index(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


Notify = Callable[[str, str, Present, bool], None]
"""Told of each address notification on our interfaces: ("add" | "del", ip, where and until when,
whether our own request socket caused it, as the kernel says for IPv4)."""


class NetlinkTable:
    """The real interfaces, through ``rtnl``: batched requests, the dump, the monitor; pyroute2 only makes
    the extra interfaces (weight classes, drain)."""

    def __init__(self, ifname: str, extra: tuple[str, ...] = (), *, create: bool = True) -> None:
        """``extra``: the interfaces the agent makes beside its own (the weight classes, the drain
        interface), made if missing (``create``; else those missing are left out: a read-only look, as
        ``l3lb status`` takes)."""
        index = _index(ifname)
        if index is None:
            raise InterfaceMissing(f"interface {ifname!r} does not exist")
        self.indices = {ifname: index}
        for name in extra:
            if create:
                self.indices[name] = self._extra_interface(name)
            elif (found := _index(name)) is not None:
                self.indices[name] = found
        self.interfaces = tuple(self.indices)
        self._names = {i: n for n, i in self.indices.items()}
        """Interface index -> name, read by the monitor thread; replaced whole, never changed in place."""
        self.duplicates: list[tuple[str, str]] = []
        self.requests = rtnl.Requests()
        self.monitor_error: str | None = None
        """Why the monitor is not following the interfaces right now (for /healthz), or None."""
        self._monitor_thread: threading.Thread | None = None
        self.monitoring = threading.Event()
        """Set once the monitor listens (and again after each restart): changes from then on are seen."""

    @staticmethod
    def _extra_interface(name: str) -> int:
        """The index of the extra interface ``name``, made if missing: a ``dummy``, or where the kernel
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
                    log.info("made interface %s (a veth pair: no dummy driver here)", name)
                else:
                    log.info("made interface %s (dummy)", name)
                found = ipr.link_lookup(ifname=name)
            ipr.link("set", index=found[0], state="up")
            return int(found[0])

    def ensure(self, interface: str) -> bool:
        index = _index(interface)
        if index is not None and index == self.indices.get(interface):
            return False
        if index is None:
            log.warning("interface %s is gone; making it again", interface)
        index = self._extra_interface(interface)
        self.indices = {**self.indices, interface: index}
        self._names = {i: n for n, i in self.indices.items()}
        return True

    def dump(self) -> dict[str, Present]:
        """The host-length addresses on our interfaces. An address on two of them counts on the first (in
        ``interfaces`` order); the later copies are listed in ``duplicates``."""
        now = time.monotonic()
        names = self._names
        found: dict[str, list[rtnl.Address]] = {name: [] for name in self.interfaces}
        for addr in self.requests.addresses():
            name = names.get(addr.index)
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

    def apply(self, changes: Sequence[Change], lifetime: int) -> list[int]:
        indices = self.indices
        return self.requests.run(
            (rtnl.RTM_NEWADDR, indices[c.interface], c.ip, lifetime)
            if c.add
            else (rtnl.RTM_DELADDR, indices[c.interface], c.ip, 0)
            for c in changes
        )

    def close(self) -> None:
        self.requests.close()

    def monitor_health(self) -> str | None:
        """None while the monitor follows the interface; else what is wrong."""
        if self._monitor_thread is not None and not self._monitor_thread.is_alive():
            return "netlink monitor thread ended"
        return self.monitor_error

    def monitor(self, notify: Notify, lost: Callable[[], None]) -> threading.Thread:
        """Follows our interfaces' address notifications in a thread: ``notify`` for each, ``lost()`` when
        the monitor listens again after an error (ENOBUFS when notifications came faster than it read
        them, say), having missed what happened meanwhile."""
        self._monitor_thread = threading.Thread(
            target=self._monitor, args=(notify, lost), name="netlink-monitor", daemon=True
        )
        self._monitor_thread.start()
        return self._monitor_thread

    def _monitor(self, notify: Notify, lost: Callable[[], None]) -> None:
        delay = 0.1
        ours = self.requests.port_id
        while True:
            try:
                with rtnl.monitor_socket() as sock:
                    self.monitoring.set()
                    if self.monitor_error is not None:
                        self.monitor_error = None
                        lost()
                    while True:
                        for kind, _, _, port, payload in rtnl.messages(sock.recv(1 << 16)):
                            self._event(rtnl.parse_address(kind, payload), port == ours, notify)
                        delay = 0.1
            except Exception as err:  # whatever it was (ENOBUFS, a parse error...): restart, then re-read
                self.monitoring.clear()
                self.monitor_error = f"netlink monitor restarting after {type(err).__name__}: {err}"
                log.warning("%s", self.monitor_error)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _event(self, addr: rtnl.Address | None, ours: bool, notify: Notify) -> None:
        if addr is None or addr.prefixlen != host_len(addr.ip):
            return
        name = self._names.get(addr.index)
        if name is None:
            return
        kind = "del" if addr.kind == rtnl.RTM_DELADDR else "add"
        expires = None if addr.valid == rtnl.FOREVER or kind == "del" else time.monotonic() + addr.valid
        notify(kind, addr.ip, Present(expires, name), ours)
