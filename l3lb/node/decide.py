"""The decision: which Service IPs this node announces, and why, as pure functions of cluster state.

Every outcome carries a short reason token (``localReadyEndpoints``, ``noLocalReadyEndpoint``,
``nodeCordoned``, ...) that logs, Events, metrics and ``l3lb status`` share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Config
from ..ipam.pools import AddressPool
from ..model import Key, Node, Service, is_ours

# Reasons to announce.
LOCAL_READY = "localReadyEndpoints"
READY = "readyEndpoints"
# Reasons not to.
NO_LOCAL_READY = "noLocalReadyEndpoint"
NO_READY = "noReadyEndpoint"
NO_INGRESS_IP = "noIngressIP"
OUTSIDE_PREFIX = "outsidePrefix"
NODE_MISSING = "nodeMissing"
NODE_NOT_READY = "nodeNotReady"
NODE_EXCLUDED = "nodeExcluded"
NODE_CORDONED = "nodeCordoned"
NODE_TO_BE_DELETED = "nodeToBeDeleted"
NODE_NOT_SELECTED = "nodeNotSelected"  # the IP's pool has a node selector that this node does not match
NOT_WANTED = "notWanted"  # no Service of ours has the IP any more (deleted, other class, IP changed)

NODE_DETAILS = {
    NODE_MISSING: "this node has no Node object",
    NODE_NOT_READY: "this node is not Ready",
    NODE_EXCLUDED: "this node is labelled node.kubernetes.io/exclude-from-external-load-balancers",
    NODE_CORDONED: "this node is cordoned",
    NODE_TO_BE_DELETED: "this node is tainted ToBeDeletedByClusterAutoscaler",
}


def node_reason(node: Node | None) -> str | None:
    """Why this node may not announce anything, or None when it is eligible."""
    if node is None:
        return NODE_MISSING
    if not node.ready:
        return NODE_NOT_READY
    if node.excluded:
        return NODE_EXCLUDED
    if node.cordoned:
        return NODE_CORDONED
    if node.to_be_deleted:
        return NODE_TO_BE_DELETED
    return None


@dataclass(frozen=True, slots=True)
class Counts:
    """Ready, non-terminating endpoints of one Service: anywhere, and on this node."""

    ready: int = 0
    local_ready: int = 0


@dataclass(frozen=True, slots=True)
class ServiceDecision:
    ips: tuple[str, ...]
    """Ingress IPs inside our prefixes: announced together, or not at all."""
    outside: tuple[str, ...]
    """Ingress IPs outside every prefix: never put on the interface."""
    announce: bool
    reason: str
    detail: str
    weight: int = 0
    """Local ready endpoints on this node, when it announces a Local Service; else 0 (weighted anycast)."""
    unselected: tuple[str, ...] = ()
    """IPs whose pool's node selector does not match this node: never announced here."""

    def announces(self, ip: str) -> bool:
        return self.announce and ip not in self.unselected


def unselected_pools(node: Node | None, config: Config) -> frozenset[str]:
    """The pools whose node selector this node does not match (its labels as the Node object has them)."""
    labels = dict(node.labels) if node else {}
    return frozenset(p.name for p in config.pools if not p.node_selector.matches(labels))


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def decide_service(
    svc: Service,
    counts: Counts,
    node_why: str | None,
    config: Config,
    unselected: frozenset[str] = frozenset(),
) -> ServiceDecision:
    """The decision for one of our Services, given its endpoint counts, this node's eligibility and the
    pools whose node selector excludes this node."""
    ips = tuple(ip for ip in svc.ingress_ips if config.in_prefix(ip))
    outside = tuple(ip for ip in svc.ingress_ips if ip not in ips)
    if not ips:
        reason, detail = (
            (OUTSIDE_PREFIX, "its IPs are outside every prefix")
            if outside
            else (NO_INGRESS_IP, "no IP in status.loadBalancer.ingress")
        )
        return ServiceDecision(ips, outside, False, reason, detail)
    if node_why is not None:
        return ServiceDecision(ips, outside, False, node_why, NODE_DETAILS[node_why])
    excluded = tuple(ip for ip in ips if _pool(config, ip).name in unselected) if unselected else ()
    if excluded and len(excluded) == len(ips):
        detail = not_selected(config, ips[0])
        return ServiceDecision(ips, outside, False, NODE_NOT_SELECTED, detail, unselected=excluded)
    d = _by_endpoints(svc, counts, ips, outside)
    return dataclasses.replace(d, unselected=excluded) if excluded else d


def _pool(config: Config, ip: str) -> AddressPool:
    """The pool of an IP inside our prefixes (the pools' prefixes are exactly ours)."""
    pool = config.pool_of(ip)
    assert pool is not None, ip
    return pool


def not_selected(config: Config, ip: str) -> str:
    pool = _pool(config, ip)
    return f"this node does not match the node selector of pool {pool.name} ({pool.node_selector})"


def _by_endpoints(
    svc: Service, counts: Counts, ips: tuple[str, ...], outside: tuple[str, ...]
) -> ServiceDecision:
    if svc.local_policy:
        if counts.local_ready:
            return ServiceDecision(
                ips,
                outside,
                True,
                LOCAL_READY,
                _plural(counts.local_ready, "local ready endpoint"),
                counts.local_ready,
            )
        return ServiceDecision(ips, outside, False, NO_LOCAL_READY, "no local ready endpoint")
    if counts.ready:
        return ServiceDecision(ips, outside, True, READY, _plural(counts.ready, "ready endpoint"))
    return ServiceDecision(ips, outside, False, NO_READY, "no ready endpoint")


@dataclass(frozen=True, slots=True)
class IPDecision:
    announce: bool
    reason: str
    detail: str
    services: tuple[Key, ...]
    """Every Service of ours that has this IP, sorted; the reason is the first announcing one's."""
    weight: int = 0
    """The most local ready endpoints of the announcing Services that share it (they share a selector)."""


def ip_weight(by_key: Mapping[Key, ServiceDecision]) -> int:
    return max((d.weight for d in by_key.values() if d.announce), default=0)


def combine(
    ip_services: Mapping[str, Mapping[Key, ServiceDecision]], config: Config
) -> dict[str, IPDecision]:
    """Per IP: announced while any Service having it wants it (reference counting for shared IPs)."""
    out = {}
    for ip, by_key in ip_services.items():
        keys = tuple(sorted(by_key))
        chosen = next((by_key[k] for k in keys if by_key[k].announces(ip)), by_key[keys[0]])
        if chosen.announce and not chosen.announces(ip):
            out[ip] = IPDecision(False, NODE_NOT_SELECTED, not_selected(config, ip), keys)
        else:
            out[ip] = IPDecision(chosen.announces(ip), chosen.reason, chosen.detail, keys, ip_weight(by_key))
    return out


def decide(
    services: Mapping[Key, Service], counts: Mapping[Key, Counts], node: Node | None, config: Config
) -> dict[str, IPDecision]:
    """Every in-prefix IP of our Services with its decision; those with ``announce`` go on the interface."""
    why = node_reason(node)
    unselected = unselected_pools(node, config)
    by_ip: dict[str, dict[Key, ServiceDecision]] = {}
    for key, svc in services.items():
        if is_ours(svc, config):
            d = decide_service(svc, counts.get(key, Counts()), why, config, unselected)
            for ip in d.ips:
                by_ip.setdefault(ip, {})[key] = d
    return combine(by_ip, config)
