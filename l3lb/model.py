"""Small typed values parsed from Kubernetes API objects (plain JSON dicts as the watch delivers them).

Only what the decision needs is kept, so trackers can drop no-op updates by comparing values and the agent
holds no raw API objects.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import aliases
from .aliases import IPS_ANNOTATION as IPS_ANNOTATION
from .aliases import POOL_ANNOTATION as POOL_ANNOTATION
from .aliases import SHARING_ANNOTATION as SHARING_ANNOTATION

if TYPE_CHECKING:
    from .config import Config

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CONDITION_PREFIX = "l3lb.io/"
"""Service conditions of this prefix are the leader's (``l3lb/conditions/``); others belong to others."""
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
AUTOSCALER_TAINT = "ToBeDeletedByClusterAutoscaler"
DRAIN_ANNOTATION = "l3lb.io/drain"
"""On a Node: "true" moves every IP this node announces off it, gracefully (see node/timers.py)."""
HOLD_DOWN_ANNOTATION = "l3lb.io/announce-hold-down"
"""On a Service: how long its reason to announce must hold before an IP goes out (a Go duration)."""
INVALID_ANNOTATION = "InvalidAnnotation"
"""The Warning Event's reason for a value l3lb cannot read; the default applies instead."""

_TRUE, _FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(text: str) -> bool | None:
    """A boolean as Go's strconv.ParseBool reads it (what Kubernetes reads the exclude label's value with,
    since 1.34: cloud-provider's nodeIncludedPredicate); None when it is none of its spellings."""
    return True if text in _TRUE else False if text in _FALSE else None


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """Seconds of a duration written as Go's time.ParseDuration reads it ("10s", "1m30s", "500ms"; "0"),
    the form Kubernetes users write durations in; None for anything else, a negative one included."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None or m.group(1) in ("", "."):
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if text else None


def field_manager(lease_namespace: str) -> str:
    """The field manager of the status writes of the agents sharing one Lease (one group of agents):
    managedFields then say which group wrote status.loadBalancer."""
    return f"l3lb/{lease_namespace}"


def key_of(obj: dict[str, Any], *, shared: bool = False) -> Key:
    """The object's key. Its namespace text is interned (one copy per namespace, not one per object), and
    with ``shared`` its name too: a Service's, which each of its EndpointSlices names again."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    return (sys.intern(meta.get("namespace") or ""), sys.intern(name) if shared else name)


def fmt_key(key: Key) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def canonical_ip(text: str) -> str:
    """The canonical text of an IP address (compressed IPv6), or ValueError."""
    return str(ipaddress.ip_address(text.strip()))


@dataclass(frozen=True, slots=True)
class Condition:
    """One entry of ``status.conditions`` (metav1.Condition)."""

    type: str
    status: str
    """"True" or "False"."""
    reason: str
    message: str
    observed_generation: int = 0
    last_transition_time: str = field(default="", compare=False)
    """RFC 3339; it changes only when ``status`` does, so it is no part of what the condition says."""


@dataclass(frozen=True, slots=True)
class Service:
    key: Key
    uid: str
    is_load_balancer: bool
    load_balancer_class: str | None
    local_policy: bool
    ingress_ips: tuple[str, ...]
    """``status.loadBalancer.ingress[].ip``: what kube-proxy routes, so what we announce."""
    requested_ips: tuple[str, ...]
    """From the ``l3lb.io/load-balancer-ips`` annotation or an alias (``l3lb/aliases.py``), else the
    deprecated ``spec.loadBalancerIP``."""
    request_error: str | None = None
    # What the allocator needs besides:
    created: str = ""
    """``metadata.creationTimestamp`` (RFC 3339, so it sorts as text): the older Service wins a conflict."""
    families: tuple[str, ...] = ()
    """``spec.ipFamilies`` as the apiserver filled it in, e.g. ("IPv4", "IPv6")."""
    family_policy: str = "SingleStack"
    sharing_key: str | None = None
    """The ``l3lb.io/allow-shared-ip`` annotation or an alias: Services with the same key may share an IP."""
    sharing_namespaces: tuple[str, ...] | None = None
    """Other namespaces it may share with: None for any; Cilium's keys are per namespace unless listed."""
    ports: tuple[tuple[str, int], ...] = ()
    """(protocol, port) pairs, sorted, each once. Tuples rather than frozensets here and below: a small
    frozenset takes four times the memory, and the agent holds one per Service."""
    selector: tuple[tuple[str, str], ...] = ()
    pool: str | None = None
    """The ``l3lb.io/address-pool`` annotation (or an alias): the pool the Service asks for."""
    labels: tuple[tuple[str, str], ...] = ()
    """For the pools' Service selectors."""
    status_managers: tuple[str, ...] = ()
    """The field managers that own status.loadBalancer (managedFields): who wrote it."""
    notes: tuple[tuple[str, str], ...] = ()
    """Warnings (reason, message) about its annotations: aliases that disagree, values l3lb cannot honour."""
    hold_down: float | None = None
    """Seconds from the ``l3lb.io/announce-hold-down`` annotation; None without a valid one (the agents'
    ``--announce-hold-down`` applies)."""
    resource_version: str = field(default="", compare=False)
    """For conditional status writes; not part of the value, so that a bump alone is no change."""
    generation: int = field(default=0, compare=False)
    """``metadata.generation``, for the conditions' observedGeneration; not part of the value either. The
    1.35 apiserver sets none on Services (0 here), so none is written."""
    conditions: tuple[Condition, ...] = field(default=(), compare=False)
    """Our entries of ``status.conditions`` (type ``l3lb.io/...``), as the leader compares them with what
    it would write; not part of the value, so that writing them changes nothing for the agents."""


def is_ours(svc: Service, config: Config) -> bool:
    """A LoadBalancer Service of the class these agents serve: the agent announces it, the allocator gives it
    IPs."""
    return svc.is_load_balancer and config.owns_class(svc.load_balancer_class)


def parse_requested(annotations: dict[str, str], spec: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """The requested IPs and, if the request is malformed, why (aliases included: ``l3lb/aliases.py``)."""
    read = aliases.read(annotations, spec)
    return read.requested, read.request_error


def parse_service(obj: dict[str, Any]) -> Service:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ips: list[str] = []
    for entry in ingress:
        try:
            ip = canonical_ip(entry.get("ip") or "")
        except ValueError:
            continue  # hostname-only ingress entries carry no IP
        if ip not in ips:  # listed twice (or spelled two ways): one IP, held and released once
            ips.append(ip)
    annotations = meta.get("annotations") or {}
    read = aliases.read(annotations, spec)
    hold_down, hold_note = _hold_down(annotations.get(HOLD_DOWN_ANNOTATION))
    return Service(
        key=key_of(obj, shared=True),
        uid=meta.get("uid") or "",
        is_load_balancer=spec.get("type") == "LoadBalancer",
        load_balancer_class=spec.get("loadBalancerClass"),
        local_policy=spec.get("externalTrafficPolicy") == "Local",
        ingress_ips=tuple(ips),
        requested_ips=read.requested,
        request_error=read.request_error,
        created=meta.get("creationTimestamp") or "",
        families=tuple(map(sys.intern, spec.get("ipFamilies") or ())),
        family_policy=sys.intern(spec.get("ipFamilyPolicy") or "SingleStack"),
        sharing_key=read.sharing_key,
        sharing_namespaces=read.sharing_namespaces,
        ports=tuple(
            sorted({(p.get("protocol") or "TCP", int(p.get("port") or 0)) for p in spec.get("ports") or []})
        ),
        selector=tuple(sorted((spec.get("selector") or {}).items())),
        pool=read.pool,
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        status_managers=_status_managers(meta.get("managedFields") or []),
        notes=read.notes + hold_note,
        hold_down=hold_down,
        resource_version=meta.get("resourceVersion") or "",
        generation=int(meta.get("generation") or 0),
        conditions=_conditions((obj.get("status") or {}).get("conditions") or []),
    )


def _conditions(entries: list[dict[str, Any]]) -> tuple[Condition, ...]:
    """Ours only. The texts are interned: many Services carry the same message (every Cluster Service
    announced by the same nodes), and every agent holds them."""
    return tuple(
        Condition(
            sys.intern(c["type"]),
            sys.intern(c.get("status") or ""),
            sys.intern(c.get("reason") or ""),
            sys.intern(c.get("message") or ""),
            int(c.get("observedGeneration") or 0),
            sys.intern(c.get("lastTransitionTime") or ""),
        )
        for c in entries
        if str(c.get("type") or "").startswith(CONDITION_PREFIX)
    )


def _hold_down(text: str | None) -> tuple[float | None, tuple[tuple[str, str], ...]]:
    """The Service's hold-down in seconds, or None with a Warning note when the value cannot be read."""
    if text is None:
        return None, ()
    seconds = parse_duration(text)
    if seconds is not None:
        return seconds, ()
    return None, (
        (
            INVALID_ANNOTATION,
            f"{HOLD_DOWN_ANNOTATION}: {text!r} is not a duration of at least 0 (write it as 10s, 1m30s, "
            "500ms); the agents' --announce-hold-down applies",
        ),
    )


def _status_managers(managed: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                m.get("manager") or ""
                for m in managed
                if m.get("subresource") == "status"
                and "f:loadBalancer" in ((m.get("fieldsV1") or {}).get("f:status") or {})
            }
        )
    )


@dataclass(frozen=True, slots=True)
class SliceSummary:
    """What one EndpointSlice contributes: ready, non-terminating endpoints anywhere and on this node."""

    service: Key | None
    ready: int
    local_ready: int
    family: str = "IPv4"
    """``addressType``: a dual-stack Service has slices of each family, each listing the same pods."""


def serving(endpoint: dict[str, Any]) -> bool:
    """As kube-proxy: an unset ready means ready. Terminating endpoints never count, even when
    publishNotReadyAddresses keeps them "ready", so routes go before pods stop."""
    cond = endpoint.get("conditions") or {}
    return cond.get("ready", True) is not False and not cond.get("terminating", False)


def parse_slice(obj: dict[str, Any], node_name: str) -> SliceSummary:
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    ready = local = 0
    for ep in obj.get("endpoints") or []:
        if serving(ep):
            ready += 1
            if ep.get("nodeName") == node_name:
                local += 1
    return SliceSummary(
        service=(sys.intern(meta.get("namespace") or ""), sys.intern(svc)) if svc else None,
        ready=ready,
        local_ready=local,
        family=sys.intern(obj.get("addressType") or "IPv4"),
    )


@dataclass(frozen=True, slots=True)
class SliceByNode:
    """What one EndpointSlice contributes to the view of every node: its ready, non-terminating endpoints
    in all and per node (the leader's conditions; an agent keeps only its own node's, ``SliceSummary``)."""

    service: Key | None
    ready: int
    by_node: tuple[tuple[str, int], ...]
    """(node name, ready endpoints there), sorted, nodes without any left out."""
    family: str = "IPv4"


def parse_slice_by_node(obj: dict[str, Any]) -> SliceByNode:
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    per_node: dict[str, int] = {}
    for ep in obj.get("endpoints") or []:
        if serving(ep):
            node = sys.intern(ep.get("nodeName") or "")
            per_node[node] = per_node.get(node, 0) + 1
    return SliceByNode(
        service=(sys.intern(meta.get("namespace") or ""), sys.intern(svc)) if svc else None,
        ready=sum(per_node.values()),
        by_node=tuple(sorted(per_node.items())),
        family=sys.intern(obj.get("addressType") or "IPv4"),
    )


@dataclass(frozen=True, slots=True)
class Node:
    """What decides whether this node announces at all (``node.decide.node_reason``). Its Ready condition is
    not kept: since KEP-3458 (GA in 1.30) Kubernetes' service controller no longer takes a NotReady node
    out of its load balancers, and neither does l3lb (the README says why)."""

    name: str
    excluded: bool = False
    """The exclude label, its value read as Kubernetes 1.34+ reads it: present and not a boolean false."""
    cordoned: bool = False
    to_be_deleted: bool = False
    """The cluster autoscaler's ToBeDeletedByClusterAutoscaler taint."""
    deleting: bool = False
    """``metadata.deletionTimestamp`` is set."""
    drain: bool = False
    """The ``l3lb.io/drain`` annotation is true."""
    labels: tuple[tuple[str, str], ...] = ()
    """For the pools' node selectors."""
    notes: tuple[tuple[str, str], ...] = ()
    """Warnings (reason, message) about its annotations: values l3lb cannot read."""


def parse_node(obj: dict[str, Any]) -> Node:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    labels = meta.get("labels") or {}
    exclude = labels.get(EXCLUDE_LABEL)
    drain_text = (meta.get("annotations") or {}).get(DRAIN_ANNOTATION)
    drain = parse_bool(drain_text) if drain_text is not None else False
    notes: tuple[tuple[str, str], ...] = ()
    if drain is None:
        notes = (
            (
                INVALID_ANNOTATION,
                f"{DRAIN_ANNOTATION}: {drain_text!r} is neither true nor false (read as Go's "
                "strconv.ParseBool reads it: true, t, 1, false, f, 0, ...); the node does not drain",
            ),
        )
    return Node(
        name=meta.get("name") or "",
        # cloud-provider's nodeIncludedPredicate (1.34+): a value that is not a boolean excludes too.
        excluded=exclude is not None and parse_bool(exclude) is not False,
        cordoned=bool(spec.get("unschedulable")),
        to_be_deleted=any(t.get("key") == AUTOSCALER_TAINT for t in spec.get("taints") or []),
        deleting=bool(meta.get("deletionTimestamp")),
        drain=bool(drain),
        labels=tuple(sorted(labels.items())),
        notes=notes,
    )


# Entries as the watch threads deliver them: (key, value).
def service_entry(obj: dict[str, Any]) -> tuple[Key, Service]:
    svc = parse_service(obj)
    return svc.key, svc


def slice_entry(node_name: str) -> Callable[[dict[str, Any]], tuple[Key, SliceSummary]]:
    return lambda obj: (key_of(obj), parse_slice(obj, node_name))


def node_entry(obj: dict[str, Any]) -> tuple[Key, Node]:
    return key_of(obj), parse_node(obj)


def slice_by_node_entry(obj: dict[str, Any]) -> tuple[Key, SliceByNode]:
    return key_of(obj), parse_slice_by_node(obj)


SERVICES, SLICES, NODE = "services", "endpointslices", "node"


Parse = Callable[[dict[str, Any]], tuple[Key, Any]]
"""Turns an API object into (key, small value), in the watch thread, so raw objects never reach the loop."""


def watched(node_name: str) -> dict[str, tuple[str, dict[str, str], Parse]]:
    """What the agent lists and watches, by resource: (collection path, selectors, parse). The agent's
    watches and ``l3lb status`` read the same."""
    return {
        SERVICES: ("/api/v1/services", {"fieldSelector": "spec.type=LoadBalancer"}, service_entry),
        SLICES: (
            "/apis/discovery.k8s.io/v1/endpointslices",
            {"labelSelector": SERVICE_NAME_LABEL},
            slice_entry(node_name),
        ),
        NODE: ("/api/v1/nodes", {"fieldSelector": f"metadata.name={node_name}"}, node_entry),
    }


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """From a watch: ``kind`` "REPLACE" (a (re)list: ``value`` is every (key, value)), "SET" or "DELETE"
    (``value`` is one (key, value); a DELETE's is the object's last state)."""

    resource: str
    kind: str
    value: Any
    at: float

    def __str__(self) -> str:
        if self.kind == "REPLACE":
            return f"{self.resource} REPLACE ({len(self.value)})"
        key, obj = self.value
        ips = getattr(obj, "ingress_ips", None)
        return f"{self.resource} {self.kind} {fmt_key(key)}" + (
            f" [{','.join(ips)}]" if ips is not None else ""
        )
