"""The allocator: which IPs each of our Services gets, as a pure function of the Services alone.

State lives in the Services' own status, so a new leader rebuilds everything from them. Services are
taken oldest first (creationTimestamp, then namespace/name), so an older Service keeps its IP in any
conflict. Each Service claims, per family it needs, its requested IP, else the IP it already has in status,
else the lowest free address of the pool. Services with the same ``l3lb.io/allow-shared-ip`` key may hold
one IP when their protocol/port pairs do not overlap and both use Cluster policy, or both Local with the
same selector.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import Network
from .model import Key, Service, fmt_key

# Conflict reasons (Warning Events, metrics and logs).
IP_IN_USE = "IPInUse"
IP_OUTSIDE_POOL = "IPOutsidePool"
INVALID_IPS = "InvalidLoadBalancerIPs"
TWO_IPS_ONE_FAMILY = "TooManyIPsForFamily"
POOL_EXHAUSTED = "PoolExhausted"
NO_POOL_FOR_FAMILY = "NoPoolForFamily"

FAMILY = {4: "IPv4", 6: "IPv6"}


@dataclass(frozen=True, slots=True)
class Conflict:
    key: Key
    reason: str
    message: str


@dataclass
class Allocation:
    ips: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    """What each Service's status.loadBalancer.ingress should hold (IPv4 first)."""
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass
class Pool:
    """The free addresses of one prefix, minus the reserved ranges, allocated lowest first."""

    net: Network
    reserved: tuple[Network, ...] = ()
    used: set[int] = field(default_factory=set)
    _cursor: int = 0

    def __post_init__(self) -> None:
        first, last = int(self.net.network_address), int(self.net.broadcast_address)
        if self.net.version == 4 and self.net.prefixlen < 31:
            first, last = first + 1, last - 1  # no network or broadcast address
        elif self.net.version == 6 and self.net.prefixlen < 127:
            first += 1  # no subnet-router anycast address
        self.first, self.last = first, last
        self._cursor = first

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        n = int(ip)
        return (
            ip.version == self.net.version
            and self.first <= n <= self.last
            and not any(ip in r for r in self.reserved if r.version == ip.version)
        )

    def next_free(self) -> str | None:
        version_cls = ipaddress.IPv4Address if self.net.version == 4 else ipaddress.IPv6Address
        n = self._cursor
        while n <= self.last:
            if n not in self.used:
                ip = version_cls(n)
                if not any(ip in r for r in self.reserved if r.version == ip.version):
                    self._cursor = n + 1
                    return str(ip)
            n += 1
        self._cursor = n
        return None


def needed_families(svc: Service, available: set[str]) -> tuple[list[str], str | None]:
    """The families a Service needs from its ipFamilies and ipFamilyPolicy, or why it cannot have them."""
    families = list(svc.families) or ["IPv4"]
    if svc.family_policy == "SingleStack":
        wanted = families[:1]
    elif svc.family_policy == "PreferDualStack":
        wanted = [
            f for f in (families + [f for f in ("IPv4", "IPv6") if f not in families]) if f in available
        ]
        return (wanted or families[:1]), (None if wanted else f"no pool for {families[0]}")
    else:  # RequireDualStack
        wanted = families + [f for f in ("IPv4", "IPv6") if f not in families]
    missing = [f for f in wanted if f not in available]
    return wanted, (f"no pool for {', '.join(missing)}" if missing else None)


@dataclass
class _Holder:
    key: Key
    svc: Service


def compatible(a: Service, b: Service) -> bool:
    """May ``a`` and ``b`` share one IP?"""
    if not a.sharing_key or a.sharing_key != b.sharing_key:
        return False
    if a.ports & b.ports:
        return False
    if a.local_policy != b.local_policy:
        return False
    return not a.local_policy or a.selector == b.selector


def allocate(
    services: Iterable[Service], prefixes: Iterable[Network], reserved: Iterable[Network] = ()
) -> Allocation:
    reserved = tuple(reserved)
    pools: dict[str, list[Pool]] = {"IPv4": [], "IPv6": []}
    for net in prefixes:
        pools[FAMILY[net.version]].append(Pool(net, reserved))
    available = {f for f, p in pools.items() if p}
    holders: dict[str, list[Service]] = {}
    out = Allocation()
    ordered = sorted(services, key=lambda s: (s.created, s.key))

    def pool_of(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Pool | None:
        return next((p for p in pools[FAMILY[ip.version]] if p.contains(ip)), None)

    def take(ip: str, svc: Service) -> bool:
        """Claims ``ip`` for ``svc`` if it is free or every holder may share it."""
        others = holders.get(ip, [])
        if others and not all(compatible(svc, o) for o in others):
            return False
        holders.setdefault(ip, []).append(svc)
        addr = ipaddress.ip_address(ip)
        pool = pool_of(addr)
        if pool is not None:
            pool.used.add(int(addr))
        return True

    pending: list[tuple[Service, list[str]]] = []
    for svc in ordered:
        wanted, why = needed_families(svc, available)
        if why:
            out.conflicts.append(
                Conflict(
                    svc.key,
                    NO_POOL_FOR_FAMILY,
                    f"{fmt_key(svc.key)} needs {why} ({svc.family_policy}); add a prefix of that family",
                )
            )
            wanted = [f for f in wanted if f in available]
        if svc.request_error:
            out.conflicts.append(Conflict(svc.key, INVALID_IPS, f"malformed request: {svc.request_error}"))
            out.ips[svc.key] = ()
            continue
        got: dict[str, str] = {}
        requested = _by_family(svc.requested_ips)
        for fam, ips in requested.items():
            if len(ips) > 1:
                out.conflicts.append(
                    Conflict(
                        svc.key, TWO_IPS_ONE_FAMILY, f"requests {', '.join(ips)}: at most one {fam} address"
                    )
                )
        for fam, ips in requested.items():
            ip = ips[0]
            if pool_of(ipaddress.ip_address(ip)) is None:
                out.conflicts.append(
                    Conflict(
                        svc.key,
                        IP_OUTSIDE_POOL,
                        f"{ip} is in no pool ({', '.join(str(p.net) for ps in pools.values() for p in ps)})",
                    )
                )
            elif take(ip, svc):
                got[fam] = ip
            else:
                owner = holders[ip][0]
                out.conflicts.append(
                    Conflict(
                        svc.key,
                        IP_IN_USE,
                        f"{ip} is used by {fmt_key(owner.key)} (older) "
                        "and sharing does not allow both (same l3lb.io/allow-shared-ip key, "
                        "no common port, same traffic policy and, for Local, same selector)",
                    )
                )
        if svc.requested_ips:
            out.ips[svc.key] = _ordered(got)
            continue
        for fam, ips in _by_family(svc.ingress_ips).items():  # keep what status already holds
            ip = ips[0]
            if fam in wanted and pool_of(ipaddress.ip_address(ip)) is not None and take(ip, svc):
                got[fam] = ip
        pending.append((svc, [f for f in wanted if f not in got]))
        out.ips[svc.key] = _ordered(got)

    for svc, families in pending:  # new addresses, after every existing claim is settled
        got = dict(_by_family_single(out.ips[svc.key]))
        for fam in families:
            ip = _shared_ip(svc, fam, holders) or _next(pools[fam], take, svc)
            if ip is None:
                out.conflicts.append(
                    Conflict(
                        svc.key,
                        POOL_EXHAUSTED,
                        f"no free {fam} address left in {', '.join(str(p.net) for p in pools[fam])}",
                    )
                )
            else:
                got[fam] = ip
        out.ips[svc.key] = _ordered(got)
    return out


def _next(pools: list[Pool], take, svc: Service) -> str | None:  # type: ignore[no-untyped-def]
    for pool in pools:
        while (ip := pool.next_free()) is not None:
            if take(ip, svc):
                return ip
    return None


def _shared_ip(svc: Service, fam: str, holders: Mapping[str, list[Service]]) -> str | None:
    """An IP of this family that Services with the same sharing key hold and may share with ``svc``."""
    if not svc.sharing_key:
        return None
    for ip, others in holders.items():
        if (
            (":" in ip) == (fam == "IPv6")
            and any(o.sharing_key == svc.sharing_key for o in others)
            and all(compatible(svc, o) for o in others)
        ):
            others.append(svc)
            return ip
    return None


def _by_family(ips: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ip in ips:
        out.setdefault("IPv6" if ":" in ip else "IPv4", []).append(ip)
    return out


def _by_family_single(ips: Iterable[str]) -> dict[str, str]:
    return {fam: v[0] for fam, v in _by_family(ips).items()}


def _ordered(got: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(got[f] for f in ("IPv4", "IPv6") if f in got)
