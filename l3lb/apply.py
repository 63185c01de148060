"""Applying decisions to the interface: a pure diff (``plan``) and the netlink calls that carry it out.

Only this module imports pyroute2. Whatever the inputs, a plan never touches an address outside the
configured prefixes or one that is not host-length (/32, /128).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute, NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

from .config import Config

log = logging.getLogger(__name__)

FOREVER = 0xFFFFFFFF


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


def plan(desired: set[str], present: Mapping[str, Present], config: Config, now: float) -> Plan:
    """What to add, renew and remove so that exactly ``desired`` is held inside our prefixes."""
    p = Plan()
    lifetime = config.address_lifetime
    for ip in sorted(desired):
        if not config.in_prefix(ip):
            continue  # decide() never asks for this; the check here makes it impossible
        have = present.get(ip)
        if have is None:
            p.add.append(ip)
        elif lifetime == 0:
            if have.expires is not None:
                p.renew.append(ip)
        elif have.expires is None or have.expires - now < lifetime - config.renew_after:
            p.renew.append(ip)
    p.remove = sorted(ip for ip in present if ip not in desired and config.in_prefix(ip))
    return p


class AddressTable(Protocol):
    """The host-length addresses of one interface."""

    def dump(self) -> dict[str, Present]: ...
    def set(self, ip: str, lifetime: int) -> None: ...
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
    valid = (msg.get("IFA_CACHEINFO") or {}).get("ifa_valid", FOREVER)  # type: ignore[attr-defined]
    return str(ipaddress.ip_address(ip)), Present(None if valid == FOREVER else now + valid)


class NetlinkTable:
    """The real interface, through rtnetlink."""

    def __init__(self, ifname: str) -> None:
        self.ipr = IPRoute()
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            self.ipr.close()
            raise InterfaceMissing(f"interface {ifname!r} does not exist")
        self.index: int = found[0]
        self.ifname = ifname

    def dump(self) -> dict[str, Present]:
        now = time.monotonic()
        out = {}
        for msg in self.ipr.get_addr(index=self.index):
            item = _present(msg, now)
            if item:
                out[item[0]] = item[1]
        return out

    def set(self, ip: str, lifetime: int) -> None:
        lifetimes = {"valid_lft": lifetime, "preferred_lft": lifetime} if lifetime else {}
        self.ipr.addr("replace", index=self.index, address=ip, prefixlen=host_len(ip), **lifetimes)

    def remove(self, ip: str) -> None:
        try:
            self.ipr.addr("del", index=self.index, address=ip, prefixlen=host_len(ip))
        except NetlinkError as err:
            if err.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                raise

    def close(self) -> None:
        self.ipr.close()

    def monitor(self, on_change: Callable[[str, str, Present | None], None]) -> threading.Thread:
        """Follows the interface's address events in a thread: ``on_change("add"|"del", ip, present)``."""
        thread = threading.Thread(
            target=self._monitor, args=(on_change,), name="netlink-monitor", daemon=True
        )
        thread.start()
        return thread

    def _monitor(self, on_change: Callable[[str, str, Present | None], None]) -> None:
        while True:
            try:
                with IPRoute() as ipr:
                    ipr.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
                    while True:
                        for msg in ipr.get():
                            if msg.get("index") != self.index:
                                continue
                            item = _present(msg, time.monotonic())
                            if item is None:
                                continue
                            if msg["event"] == "RTM_DELADDR":
                                on_change("del", item[0], None)
                            elif msg["event"] == "RTM_NEWADDR":
                                on_change("add", item[0], item[1])
            except OSError as err:
                log.warning("netlink monitor failed, restarting: %s", err)
                on_change("resync", "", None)
                time.sleep(1)
