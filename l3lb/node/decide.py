"""The decision: which Service IPs this node announces, and why, as pure functions of cluster state.

Every outcome carries a short reason token that logs, Events, metrics, ``l3lb status`` and ``status --all``
share. To announce: ``localReadyEndpoints`` (Local), ``readyEndpoints`` (Cluster). Not to, because of the
Service: ``noLocalReadyEndpoint``, ``noReadyEndpoint``, ``noIngressIP``, ``outsidePrefix``, ``notWanted``
(no Service of ours has the IP any more), ``nodeNotSelected`` (its pool's node selector). Because of this
node (``node_reason``, first match wins):

- ``nodeMissing``: no Node object;
- ``nodeDeleting``: its ``deletionTimestamp`` is set, and ``nodeToBeDeleted``: the cluster autoscaler's
  ``ToBeDeletedByClusterAutoscaler`` taint. What Kubernetes' service controller still drops nodes for
  (cloud-provider's ``stableNodeSetPredicates``: ``nodeNotDeletedPredicate``, ``nodeUnTaintedPredicate``)
  and what kube-proxy fails its health check on so that load balancers drain the node's connections
  (KEP-3836, ``proxier_health.go`` ``SyncNode``): withdrawn through the drain (``GRACEFUL``);
- ``nodeExcluded``: the label ``node.kubernetes.io/exclude-from-external-load-balancers`` with a value that
  is not a boolean false (``nodeIncludedPredicate``, 1.34+: "false" includes, "true" or anything else
  excludes);
- ``nodeCordoned``: ``spec.unschedulable``, only with ``--withdraw-on-cordon``. Kubernetes keeps cordoned
  nodes in its load balancers since 1.19 (kubernetes/kubernetes#90823), and MetalLB reverted the same
  withdrawal (metallb/metallb#2470, reverted in #2715) after it cut DaemonSet ingress off;
- ``nodeDraining``: the Node's annotation ``l3lb.io/drain`` is true: withdrawn through the drain.

And ``agentStopping`` (SIGTERM): not from the API; withdrawn through the drain. The Ready condition is no
reason (KEP-3458: the service controller stopped following it in 1.27, GA in 1.30): a Local Service follows
its endpoints, which the node lifecycle controller marks not ready when a node stops reporting.

A decision made for a reason in ``GRACEFUL`` has ``draining`` set when the node would announce otherwise:
its IPs first move to the drain interface (``node/timers.py``), then go. Each Service's ``hold_down`` is how
long its reason to announce must last before an IP goes out (timed in ``node/timers.py`` too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Config
from ..ipam.pools import AddressPool
from ..model import DRAIN_ANNOTATION, EXCLUDE_LABEL, Key, Node, Service, is_ours

# Reasons to announce.
LOCAL_READY = "localReadyEndpoints"
READY = "readyEndpoints"
# Reasons not to.
NO_LOCAL_READY = "noLocalReadyEndpoint"
NO_READY = "noReadyEndpoint"
NO_INGRESS_IP = "noIngressIP"
OUTSIDE_PREFIX = "outsidePrefix"
NODE_MISSING = "nodeMissing"
NODE_DELETING = "nodeDeleting"
NODE_TO_BE_DELETED = "nodeToBeDeleted"
NODE_EXCLUDED = "nodeExcluded"
NODE_CORDONED = "nodeCordoned"  # only with --withdraw-on-cordon
NODE_DRAINING = "nodeDraining"
AGENT_STOPPING = "agentStopping"  # SIGTERM: not a reason the API gives
NODE_NOT_SELECTED = "nodeNotSelected"  # the IP's pool has a node selector that this node does not match
NOT_WANTED = "notWanted"  # no Service of ours has the IP any more (deleted, other class, IP changed)

GRACEFUL = frozenset({NODE_DELETING, NODE_TO_BE_DELETED, NODE_DRAINING, AGENT_STOPPING})
"""Reasons that withdraw through the drain: the node still works, and is asked to hand its traffic over
(RFC 8326: advertised with GRACEFUL_SHUTDOWN first). The others withdraw at once."""

NODE_DETAILS = {
    NODE_MISSING: "this node has no Node object",
    NODE_DELETING: "this node's Node is being deleted (deletionTimestamp)",
    NODE_TO_BE_DELETED: "this node is tainted ToBeDeletedByClusterAutoscaler",
    NODE_EXCLUDED: f"this node is labelled {EXCLUDE_LABEL} (not false)",
    NODE_CORDONED: "this node is cordoned (--withdraw-on-cordon)",
    NODE_DRAINING: f"this node is draining ({DRAIN_ANNOTATION})",
    AGENT_STOPPING: "the agent is stopping",
}


def node_reason(node: Node | None, config: Config) -> str | None:
    """Why this node may not announce anything, or None when it is eligible (the module says which rule
    is which)."""
    if node is None:
        return NODE_MISSING
    if node.deleting:
        return NODE_DELETING
    if node.to_be_deleted:
        return NODE_TO_BE_DELETED
    if node.excluded:
        return NODE_EXCLUDED
    if node.cordoned and config.withdraw_on_cordon:
        return NODE_CORDONED
    if node.drain:
        return NODE_DRAINING
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
    draining: bool = False
    """Not announced for a reason in GRACEFUL, but it would be otherwise: its IPs drain before they go."""
    hold_down: float = 0.0
    """Seconds its reason to announce must last before its IPs go out (annotation, else the agents')."""

    def announces(self, ip: str) -> bool:
        return self.announce and ip not in self.unselected

    def drains(self, ip: str) -> bool:
        return self.draining and ip not in self.unselected


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
    if node_why is not None and node_why not in GRACEFUL:
        return ServiceDecision(ips, outside, False, node_why, NODE_DETAILS[node_why])
    excluded = tuple(ip for ip in ips if _pool(config, ip).name in unselected) if unselected else ()
    if excluded and len(excluded) == len(ips):
        detail = not_selected(config, ips[0])
        return ServiceDecision(ips, outside, False, NODE_NOT_SELECTED, detail, unselected=excluded)
    hold = svc.hold_down if svc.hold_down is not None else config.announce_hold_down
    d = _by_endpoints(svc, counts, ips, outside)
    if node_why is not None:  # graceful: it drains if it would be announced
        d = ServiceDecision(ips, outside, False, node_why, NODE_DETAILS[node_why], draining=d.announce)
    return dataclasses.replace(d, unselected=excluded, hold_down=hold) if excluded or hold else d


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
    """Every Service of ours that has this IP, sorted; the reason is the first announcing one's (else the
    first draining one's, else the first one's)."""
    weight: int = 0
    """The most local ready endpoints of the announcing Services that share it (they share a selector)."""
    draining: bool = False
    """Not announced, but a Service having it would announce it but for a reason in GRACEFUL."""
    hold_down: float = 0.0
    """The shortest hold-down of the Services that announce it (while any wants it, it is announced)."""


def ip_weight(by_key: Mapping[Key, ServiceDecision]) -> int:
    return max((d.weight for d in by_key.values() if d.announce), default=0)


def combine(
    ip_services: Mapping[str, Mapping[Key, ServiceDecision]], config: Config
) -> dict[str, IPDecision]:
    """Per IP: announced while any Service having it wants it (reference counting for shared IPs)."""
    out = {}
    for ip, by_key in ip_services.items():
        keys = tuple(sorted(by_key))
        chosen = next(
            (by_key[k] for k in keys if by_key[k].announces(ip)),
            next((by_key[k] for k in keys if by_key[k].drains(ip)), by_key[keys[0]]),
        )
        if (chosen.announce or chosen.draining) and ip in chosen.unselected:
            out[ip] = IPDecision(False, NODE_NOT_SELECTED, not_selected(config, ip), keys)
        elif chosen.announces(ip):
            hold = min(d.hold_down for d in by_key.values() if d.announces(ip))
            out[ip] = IPDecision(True, chosen.reason, chosen.detail, keys, ip_weight(by_key), hold_down=hold)
        else:
            out[ip] = IPDecision(False, chosen.reason, chosen.detail, keys, draining=chosen.drains(ip))
    return out


def decide(
    services: Mapping[Key, Service], counts: Mapping[Key, Counts], node: Node | None, config: Config
) -> dict[str, IPDecision]:
    """Every in-prefix IP of our Services with its decision; those with ``announce`` go on the interface."""
    why = node_reason(node, config)
    unselected = unselected_pools(node, config)
    by_ip: dict[str, dict[Key, ServiceDecision]] = {}
    for key, svc in services.items():
        if is_ours(svc, config):
            d = decide_service(svc, counts.get(key, Counts()), why, config, unselected)
            for ip in d.ips:
                by_ip.setdefault(ip, {})[key] = d
    return combine(by_ip, config)
