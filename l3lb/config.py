"""The agent's configuration: one frozen snapshot, built once from the command line and read by every sync."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from .ipam.pools import Address, AddressPool, Network, shorthand

DEFAULT_CLASS = "l3lb.io/l3lb"
CLASS_PREFIX = "l3lbw"
"""Weight-class interfaces are l3lbw1 ... l3lbwN (nixos/frr.nix matches the same names)."""
DEFAULT_DRAIN_SECONDS = 40
"""``l3lb run --drain-seconds`` and the module's ``drainSeconds``: one eBGP hop with a 30 s advertisement
interval (Cisco IOS's default) and 10 s more for the hops and FIBs behind it (the README says more)."""
DRAIN_INTERFACE = "l3lbdrain"
"""Where an IP drains before it is withdrawn: nixos/frr.nix tags routes from there GRACEFUL_SHUTDOWN."""


def parse_prefixes(values: Iterable[str], *, allow_empty: bool = False) -> tuple[Network, ...]:
    """Parses and checks the configured prefixes: valid CIDRs (host bits clear), none overlapping.

    Raises ValueError with a message that names the bad value.
    """
    nets: list[Network] = []
    for raw in values:
        for part in raw.split(","):
            text = part.strip()
            if not text:
                continue
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as err:
                raise ValueError(f"invalid prefix {text!r}: {err}") from None
            for other in nets:
                if net.version == other.version and net.overlaps(other):
                    raise ValueError(f"prefixes {other} and {net} overlap")
            nets.append(net)
    if not nets and not allow_empty:
        raise ValueError("at least one prefix is required")
    return tuple(nets)


MEMO_SIZE = 1 << 17
"""Answers of ``Config.in_prefix`` kept per configuration (the memo starts over when full)."""


@functools.lru_cache(maxsize=MEMO_SIZE)
def pool_containing(pools: tuple[AddressPool, ...], ip: str | Address) -> AddressPool | None:
    """The first of ``pools`` whose prefixes hold ``ip`` (cached: parsing the text is most of the cost)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return next((p for p in pools if p.contains(addr)), None)


@dataclass(frozen=True, slots=True)
class Config:
    prefixes: tuple[Network, ...]
    node_name: str
    interface: str = "lo"
    load_balancer_class: str = DEFAULT_CLASS
    default_class: bool = True
    address_lifetime: int = 60
    dry_run: bool = False
    keep_on_exit: bool = False
    reserved: tuple[Network, ...] = ()
    """Ranges inside the prefixes that the allocator never hands out."""
    weight_classes: int = 0
    """Weighted anycast: the number of weight classes (0: off, every IP on ``interface``)."""
    pools: tuple[AddressPool, ...] = ()
    """The named pools (config file); without them, one pool of ``prefixes`` minus ``reserved``. With
    them, ``prefixes`` and ``reserved`` are their union."""
    withdraw_on_cordon: bool = False
    """A cordoned node withdraws, as l3lb did before; Kubernetes' service controller has not since 1.19."""
    drain_seconds: int = 0
    """Seconds an IP withdrawn for a graceful reason (node/decide.py GRACEFUL) is advertised with
    GRACEFUL_SHUTDOWN from DRAIN_INTERFACE before it goes; 0: withdrawn at once (``l3lb run``: 40)."""
    announce_hold_down: float = 0.0
    """Seconds a Service's reason to announce must last before its IP goes out, unless its annotation says."""
    _in_prefix: dict[str | Address, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Memo of ``in_prefix``, keyed by the IP alone: a full sync asks it of every held address, and a
    cache keyed by the prefixes as well would hash them (in Python) on every call."""

    def __post_init__(self) -> None:
        if not self.pools:
            object.__setattr__(self, "pools", shorthand(self.prefixes, self.reserved))
        else:
            object.__setattr__(self, "prefixes", tuple(n for p in self.pools for n in p.prefixes))
            object.__setattr__(self, "reserved", tuple(n for p in self.pools for n in p.reserved))

    def pool_of(self, ip: str | Address) -> AddressPool | None:
        """The pool whose prefixes hold ``ip``, if any."""
        return pool_containing(self.pools, ip)

    def class_interface(self, weight: int) -> str:
        """The interface of the weight class of ``weight`` local ready endpoints (capped at the classes)."""
        return f"{CLASS_PREFIX}{min(weight, self.weight_classes)}"

    @property
    def class_interfaces(self) -> tuple[str, ...]:
        return tuple(f"{CLASS_PREFIX}{w}" for w in range(1, self.weight_classes + 1))

    @property
    def drain_interface(self) -> str | None:
        return DRAIN_INTERFACE if self.drain_seconds else None

    @property
    def extra_interfaces(self) -> tuple[str, ...]:
        """The interfaces the agent makes beside its own: the weight classes, then the drain interface."""
        return self.class_interfaces + ((DRAIN_INTERFACE,) if self.drain_seconds else ())

    def in_prefix(self, ip: str | Address) -> bool:
        """Whether ``ip`` lies inside one of our prefixes: the only addresses l3lb may ever touch."""
        known = self._in_prefix.get(ip)
        if known is None:
            if len(self._in_prefix) >= MEMO_SIZE:
                self._in_prefix.clear()
            addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
            known = any(addr.version == net.version and addr in net for net in self.prefixes)
            self._in_prefix[ip] = known
        return known

    def owns_class(self, lb_class: str | None) -> bool:
        if lb_class is None:
            return self.default_class
        return lb_class == self.load_balancer_class

    @property
    def renew_after(self) -> float:
        """Seconds after which an address's lifetime is renewed: a third of it, so two renewals may fail."""
        return self.address_lifetime / 3 if self.address_lifetime else 0.0
