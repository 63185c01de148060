"""The assignment: which IPs each of our Services gets, as a pure function of the Services alone (the
leader's ``Allocator`` runs it and writes what differs).

State lives in the Services' own status, so a new leader rebuilds everything from them. Services are
taken oldest first (creationTimestamp, then namespace/name), so an older Service keeps its IP in any
conflict. Each Service claims, per family it needs, its requested IP, else the IP it already has in status,
else the lowest free address of its pool: the one its ``l3lb.io/address-pool`` annotation names, else the
first auto-assign pool that allows its namespace and labels. A change of configuration never takes an IP
away from a Service (a warning says what the operator can do), except that naming another pool moves it.
Services with the same ``l3lb.io/allow-shared-ip`` key may hold
one IP when their protocol/port pairs do not overlap and both use Cluster policy, or both Local with the
same selector.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import Network, pool_containing
from ..model import POOL_ANNOTATION, Key, Service, fmt_key
from .pools import AddressPool

# Conflict reasons (Warning Events, metrics and logs).
IP_IN_USE = "IPInUse"
IP_OUTSIDE_POOL = "IPOutsidePool"
INVALID_IPS = "InvalidLoadBalancerIPs"
TWO_IPS_ONE_FAMILY = "TooManyIPsForFamily"
POOL_EXHAUSTED = "PoolExhausted"
NO_POOL_FOR_FAMILY = "NoPoolForFamily"
UNKNOWN_POOL = "UnknownPool"
POOL_NOT_ALLOWED = "PoolNotAllowed"
NO_POOL_ALLOWED = "NoPoolAllowed"

FAMILY = {4: "IPv4", 6: "IPv6"}


@dataclass(frozen=True, slots=True)
class Conflict:
    key: Key
    reason: str
    message: str


@dataclass
class Assignment:
    ips: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    """What each Service's status.loadBalancer.ingress should hold (IPv4 first)."""
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass
class Range:
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
    if a.key[0] != b.key[0] and not (_admits(a, b.key[0]) and _admits(b, a.key[0])):
        return False  # Cilium's keys: one namespace, unless both list each other's (l3lb/aliases.py)
    if not frozenset(a.ports).isdisjoint(b.ports):
        return False
    if a.local_policy != b.local_policy:
        return False
    return not a.local_policy or a.selector == b.selector


def _admits(svc: Service, namespace: str) -> bool:
    allowed = svc.sharing_namespaces
    return allowed is None or "*" in allowed or namespace in allowed


def assign(
    services: Iterable[Service], pools: tuple[AddressPool, ...], field_manager: str | None = None
) -> Assignment:
    """``field_manager``: our group's; an IP it wrote that is in no pool any more (the pool was removed or
    renamed) stays in the Service's status, with a warning, instead of being replaced."""
    ranges = {p.name: [Range(net, p.reserved) for net in p.prefixes] for p in pools}
    by_name = {p.name: p for p in pools}
    holders: dict[str, list[Service]] = {}
    out = Assignment()
    ordered = sorted(services, key=lambda s: (s.created, s.key))

    def pool_of(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> AddressPool | None:
        return pool_containing(pools, ip)

    def range_of(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Range | None:
        pool = pool_of(ip)
        return next((r for r in ranges[pool.name] if r.contains(ip)), None) if pool else None

    def take(ip: str, svc: Service) -> bool:
        """Claims ``ip`` for ``svc`` if it is free or every holder may share it."""
        others = holders.get(ip, [])
        if others and not all(compatible(svc, o) for o in others):
            return False
        holders.setdefault(ip, []).append(svc)
        addr = ipaddress.ip_address(ip)
        r = range_of(addr)
        if r is not None:
            r.used.add(int(addr))
        return True

    def conflict(svc: Service, reason: str, message: str) -> None:
        out.conflicts.append(Conflict(svc.key, reason, message))

    pending: list[tuple[Service, list[str], list[AddressPool]]] = []
    for svc in ordered:
        for reason, message in svc.notes:  # what its annotations say that l3lb reads otherwise
            conflict(svc, reason, message)
        if svc.request_error:
            conflict(svc, INVALID_IPS, f"malformed request: {svc.request_error}")
            out.ips[svc.key] = ()
            continue
        named = by_name.get(svc.pool) if svc.pool else None
        if svc.pool and named is None:
            conflict(
                svc,
                UNKNOWN_POOL,
                f"{POOL_ANNOTATION} names pool {svc.pool!r}, which is not configured "
                f"(pools: {', '.join(by_name)}); it keeps the IPs it has and gets no new one",
            )
        labels = dict(svc.labels)
        refused_named = named.refuses(svc.key[0], labels) if named else None
        if refused_named:
            conflict(svc, POOL_NOT_ALLOWED, f"{POOL_ANNOTATION} names pool {svc.pool}, but {refused_named}")
        # Where new addresses may come from: the named pool, else every auto-assign pool that allows it.
        if svc.pool:
            candidates = [named] if named and not refused_named else []
        else:
            candidates = [p for p in pools if p.auto_assign and p.refuses(svc.key[0], labels) is None]
        available = {f for p in candidates for f in p.families()}
        wanted, why = needed_families(svc, available)
        needs, _ = needed_families(svc, {"IPv4", "IPv6"})
        if why and candidates:
            conflict(
                svc,
                NO_POOL_FOR_FAMILY,
                f"{fmt_key(svc.key)} needs {why} ({svc.family_policy}); add a prefix of that family "
                f"to {' or '.join(p.name for p in candidates)}",
            )
        elif not candidates and not svc.pool and not svc.requested_ips:
            refusals = "; ".join(
                p.refuses(svc.key[0], labels) or f"pool {p.name} is not auto-assign" for p in pools
            )
            conflict(svc, NO_POOL_ALLOWED, f"no pool gives {fmt_key(svc.key)} an address: {refusals}")
        wanted = [f for f in wanted if f in available]
        got: dict[str, str] = {}
        requested = _by_family(svc.requested_ips)
        for fam, ips in requested.items():
            if len(ips) > 1:
                conflict(svc, TWO_IPS_ONE_FAMILY, f"requests {', '.join(ips)}: at most one {fam} address")
        for fam, ips in requested.items():
            ip = ips[0]
            pool = pool_of(ipaddress.ip_address(ip))
            refused = pool.refuses(svc.key[0], labels) if pool else None
            if pool is None:
                where = ", ".join(f"{p.name} {' '.join(map(str, p.prefixes))}" for p in pools)
                if _ours(svc, ip, field_manager) and take(ip, svc):
                    got[fam] = ip
                    conflict(svc, IP_OUTSIDE_POOL, f"{ip} is in no pool any more ({where}): {KEPT}")
                else:
                    conflict(svc, IP_OUTSIDE_POOL, f"{ip} is in no pool ({where})")
            elif named and pool is not named:
                conflict(
                    svc,
                    IP_OUTSIDE_POOL,
                    f"{ip} is in pool {pool.name}, not in pool {named.name} that {POOL_ANNOTATION} names",
                )
            elif refused and ip not in svc.ingress_ips:
                conflict(svc, POOL_NOT_ALLOWED, f"{ip}: {refused}")
            elif take(ip, svc):
                if refused:
                    conflict(svc, POOL_NOT_ALLOWED, f"{ip} is kept because the Service has it, but {refused}")
                got[fam] = ip
            else:
                owner = holders[ip][0]
                conflict(
                    svc,
                    IP_IN_USE,
                    f"{ip} is used by {fmt_key(owner.key)} (older) and sharing does not allow both {RULES}",
                )
        if svc.requested_ips:
            out.ips[svc.key] = _ordered(got)
            continue
        for fam, ips in _by_family(svc.ingress_ips).items():  # keep what status already holds
            ip = ips[0]
            pool = pool_of(ipaddress.ip_address(ip))
            if fam not in needs:
                continue
            if pool is None:
                if not named and _ours(svc, ip, field_manager) and take(ip, svc):
                    if not svc.pool:  # else the UnknownPool warning says it keeps its IPs
                        conflict(svc, IP_OUTSIDE_POOL, f"{ip} is in no pool any more (removed?): {KEPT}")
                    got[fam] = ip
                continue
            if named and pool is not named:
                continue  # the operator named another pool: move
            if not take(ip, svc):
                if not _ours(svc, ip, field_manager) and svc.status_managers:
                    # Another controller's status (a takeover): say why it moves, never silently.
                    conflict(
                        svc,
                        IP_IN_USE,
                        f"{ip} in its status (written by {', '.join(svc.status_managers)}) is used by "
                        f"{fmt_key(holders[ip][0].key)} (older) and sharing does not allow both {RULES}: "
                        "it gets another IP",
                    )
                continue
            got[fam] = ip
            refused = pool.refuses(svc.key[0], labels)
            if refused and not named:
                conflict(
                    svc,
                    POOL_NOT_ALLOWED,
                    f"{ip} is kept because the Service has it, but {refused}; to move it, name a "
                    f"pool with {POOL_ANNOTATION}",
                )
        pending.append((svc, [f for f in wanted if f not in got], candidates))
        out.ips[svc.key] = _ordered(got)

    for svc, families, candidates in pending:  # new addresses, after every existing claim is settled
        got = dict(_by_family_single(out.ips[svc.key]))
        for fam in families:
            ip = _shared_ip(svc, fam, holders, candidates) or _next(
                [r for p in candidates for r in ranges[p.name] if FAMILY[r.net.version] == fam], take, svc
            )
            if ip is None:
                where = ", ".join(
                    f"{p.name} {' '.join(str(n) for n in p.prefixes if FAMILY[n.version] == fam)}"
                    for p in candidates
                    if fam in p.families()
                )
                conflict(svc, POOL_EXHAUSTED, f"no free {fam} address left in {where}")
            else:
                got[fam] = ip
        out.ips[svc.key] = _ordered(got)
    return out


RULES = (
    "(the same sharing key, l3lb.io/allow-shared-ip or an alias; no common protocol and port; the same "
    "traffic policy and, for Local, the same selector)"
)
KEPT = (
    "kept in status but announced by no node; to move the Service, name a pool with "
    f"{POOL_ANNOTATION} or request an IP in one"
)


def _ours(svc: Service, ip: str, field_manager: str | None) -> bool:
    """Whether ``ip`` is in the Service's status as our group of agents wrote it."""
    return ip in svc.ingress_ips and field_manager is not None and field_manager in svc.status_managers


def _next(ranges: list[Range], take, svc: Service) -> str | None:  # type: ignore[no-untyped-def]
    for r in ranges:
        while (ip := r.next_free()) is not None:
            if take(ip, svc):
                return ip
    return None


def _shared_ip(
    svc: Service, fam: str, holders: Mapping[str, list[Service]], candidates: Sequence[AddressPool]
) -> str | None:
    """An IP of this family, in a pool ``svc`` may use, that Services with the same sharing key hold and
    may share with it."""
    if not svc.sharing_key:
        return None
    for ip, others in holders.items():
        if (
            (":" in ip) == (fam == "IPv6")
            and any(p.contains(ipaddress.ip_address(ip)) for p in candidates)
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
