"""The plan: a pure diff from what should be on the interfaces to what is. Whatever the inputs, a plan never
touches an address outside the configured prefixes or one that is not host-length (/32, /128)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..config import Config
from ..netlink.tables import Present


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
