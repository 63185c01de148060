"""``l3lb import``: the other load balancers' address pools as l3lb's pools, printed as the agent's config
file (YAML, ``l3lb run --config``) or as a ``services.l3lb.pools`` Nix attribute set for the module.

Read: MetalLB ``IPAddressPool`` (with the ``BGPAdvertisement``, ``L2Advertisement`` and ``Community``
objects that apply to it), Cilium ``CiliumLoadBalancerIPPool`` and PureLB ``ServiceGroup``, from YAML files
(``-f``, several documents or ``kind: List`` each) or from the cluster. What l3lb has no equivalent for is
printed as a comment above the pool that names the field and says what l3lb does instead; nothing is
dropped silently. The output is checked with the agent's own parser before it is printed.

Choices where l3lb differs (each said again in the comments where it applies):

- Ranges (``a-b``, Cilium's start/stop) become the smallest set of CIDRs covering exactly the range.
  l3lb hands out neither the first nor the last address of an IPv4 prefix shorter than /31 (nor the
  first of an IPv6 prefix shorter than /127): those become addresses for requests only, listed.
- Pools are ordered as the other project picks them for a Service that names none: MetalLB by
  ``serviceAllocation.priority`` (lowest first, pools without one last), PureLB's namespace defaults
  first and its ``default`` group last; the Nix output carries the same order as ``priority``.
- Selectors on namespaces (MetalLB ``namespaceSelectors``, Cilium's ``io.kubernetes.service.namespace``
  key) become a ``namespaces`` list resolved against the namespaces known at import (the cluster's, or
  Namespace objects in the files): namespaces made later are not in it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Network
from .pools import OPERATORS, Labels, Requirement, Selector, parse

METALLB, CILIUM, PURELB = "metallb.io", "cilium.io", "purelb.io"
CILIUM_NAMESPACE_KEY = "io.kubernetes.service.namespace"
CILIUM_NAME_KEY = "io.kubernetes.service.name"
STOPPING = {
    "65535:65281": "no-export",
    "65535:65282": "no-advertise",
    "65535:65283": "local-AS",
    "no-export": "no-export",
    "no-advertise": "no-advertise",
    "local-as": "local-AS",
}
"""Communities the module refuses (nixos/default.nix): set where the node redistributes, they keep FRR
from advertising the routes to the node's own eBGP peers."""
MAX_RESERVED = 32
NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")


class ImportFailed(ValueError):
    """Input that cannot be read at all (not YAML, a file missing)."""


@dataclass
class Pool:
    name: str
    source: str
    """Which object it comes from, e.g. ``MetalLB IPAddressPool metallb-system/example``."""
    prefixes: list[Network] = field(default_factory=list)
    reserved: list[Network] = field(default_factory=list)
    auto_assign: bool = True
    namespaces: list[str] = field(default_factory=list)
    service_selector: dict[str, Any] | None = None
    node_selector: dict[str, Any] | None = None
    communities: list[str] = field(default_factory=list)
    large_communities: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """One comment each: the field, and what l3lb does instead."""
    order: tuple = ()


@dataclass
class Imported:
    pools: list[Pool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """About the input as a whole (objects without an equivalent, order)."""
    sources: list[str] = field(default_factory=list)


# ---- reading


def load_files(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every object in the files: YAML documents, ``kind: List`` items flattened."""
    import yaml

    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ImportFailed(f"{path}: {err.strerror}") from None
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as err:
            raise ImportFailed(f"{path}: not YAML: {err}") from None
        out += [dict(o, _source=str(path)) for o in _flatten(docs)]
    return out


def _flatten(docs: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            yield from _flatten(doc.get("items") or [])
        elif isinstance(doc, dict) and doc.get("kind"):
            yield doc


CLUSTER_KINDS = (
    (METALLB, ("ipaddresspools", "bgpadvertisements", "l2advertisements", "communities")),
    (CILIUM, ("ciliumloadbalancerippools",)),
    (PURELB, ("servicegroups",)),
)


def from_cluster(api: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The three projects' objects from the cluster (each group's preferred version), and what could not
    be read; Namespaces too, to resolve namespace selectors."""
    from kubernetes.client.rest import ApiException

    from ..k8s.api import api_message

    objects: list[dict[str, Any]] = []
    missing: list[str] = []
    for group, resources in CLUSTER_KINDS:
        try:
            version = api.get_json(f"/apis/{group}")["preferredVersion"]["groupVersion"]
        except ApiException as err:
            missing.append(f"API group {group}: {'not installed' if err.status == 404 else api_message(err)}")
            continue
        for resource in resources:
            try:
                listed = api.get_json(f"/apis/{version}/{resource}")
            except ApiException as err:
                if err.status != 404:
                    missing.append(f"{resource}.{group}: {api_message(err)}")
                continue
            kind = (listed.get("kind") or "").removesuffix("List")
            for item in listed.get("items") or []:
                objects.append({"apiVersion": version, "kind": kind, **item, "_source": "the cluster"})
    try:
        for ns in api.get_json("/api/v1/namespaces").get("items") or []:
            objects.append({"apiVersion": "v1", "kind": "Namespace", **ns, "_source": "the cluster"})
    except ApiException as err:
        missing.append(f"namespaces: {api_message(err)} (namespace selectors stay unresolved)")
    return objects, missing


# ---- converting


def convert(objects: list[dict[str, Any]]) -> Imported:
    out = Imported(sources=list(dict.fromkeys(o.get("_source", "?") for o in objects)))
    objects = _last_of_each(objects, out)
    namespaces = {
        _meta(o)["name"]: {str(k): str(v) for k, v in (_meta(o).get("labels") or {}).items()}
        for o in objects
        if o.get("kind") == "Namespace" and _meta(o).get("name")
    }
    resolver = Namespaces(namespaces if any(o.get("kind") == "Namespace" for o in objects) else None)
    by_group: dict[str, list[dict[str, Any]]] = {}
    ignored: list[str] = []
    for o in objects:
        group = str(o.get("apiVersion") or "").split("/")[0]
        if group.endswith(METALLB) or group.endswith(CILIUM) or group.endswith(PURELB):
            by_group.setdefault(_project(group), []).append(o)
        elif o.get("kind") != "Namespace":
            ignored.append(f"{o.get('kind')} {_where(o)}")
    if METALLB in by_group:
        _metallb(by_group[METALLB], resolver, out)
    if CILIUM in by_group:
        _cilium(by_group[CILIUM], resolver, out)
    if PURELB in by_group:
        _purelb(by_group[PURELB], out)
    if ignored:
        out.notes.append(f"not load-balancer configuration, ignored: {', '.join(ignored)}")
    _unique_names(out)
    _no_overlaps(out)
    out.notes = list(dict.fromkeys(out.notes))
    return out


def _last_of_each(objects: list[dict[str, Any]], out: Imported) -> list[dict[str, Any]]:
    """One object per group, kind, namespace and name: the last one read, as kubectl apply would leave."""
    by_id: dict[tuple[str, ...], dict[str, Any]] = {}
    for o in objects:
        ident = (
            _project(str(o.get("apiVersion") or "").split("/")[0]),
            str(o.get("kind")),
            str(_meta(o).get("namespace") or ""),
            str(_meta(o).get("name") or ""),
        )
        if ident in by_id and o.get("kind") != "Namespace":
            out.notes.append(f"{o.get('kind')} {_where(o)} is given twice: the last one read is imported")
        by_id[ident] = o
    return list(by_id.values())


def _project(group: str) -> str:
    for p in (METALLB, CILIUM, PURELB):
        if group == p or group.endswith("." + p):
            return p
    return group


def _meta(o: dict[str, Any]) -> dict[str, Any]:
    meta = o.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _spec(o: dict[str, Any]) -> dict[str, Any]:
    spec = o.get("spec")
    return spec if isinstance(spec, dict) else {}


def _where(o: dict[str, Any]) -> str:
    meta = _meta(o)
    name = str(meta.get("name") or "?")
    return f"{meta['namespace']}/{name}" if meta.get("namespace") else name


class Namespaces:
    """Resolves selectors on namespaces against the namespaces known at import, if any are."""

    def __init__(self, known: dict[str, dict[str, str]] | None) -> None:
        self.known = known

    def matching(self, selector: Selector) -> list[str] | None:
        if self.known is None:
            return None
        return sorted(n for n, labels in self.known.items() if selector.matches(labels))


# ---- addresses


def _range(text: str) -> tuple[list[Network], str | None]:
    """A CIDR or ``a-b`` range as CIDRs, and a note if the text was not taken literally."""
    text = str(text).strip()
    if "-" in text:
        first, _, last = text.partition("-")
        a, b = ipaddress.ip_address(first.strip()), ipaddress.ip_address(last.strip())
        if a.version != b.version or int(a) > int(b):
            raise ValueError(f"{text}: not a range")
        return list(ipaddress.summarize_address_range(a, b)), None  # type: ignore[arg-type]
    net = ipaddress.ip_network(text, strict=False)
    try:
        ipaddress.ip_network(text, strict=True)
        return [net], None
    except ValueError:
        return [net], f"{text} has host bits set: read as {net}, as the project reads it"


def _edges(nets: Iterable[Network]) -> list[str]:
    """The addresses l3lb does not hand out by itself: an IPv4 prefix's first and last (shorter than
    /31), an IPv6 prefix's first (shorter than /127)."""
    out = []
    for n in nets:
        if n.version == 4 and n.prefixlen < 31:
            out += [str(n.network_address), str(n.broadcast_address)]
        elif n.version == 6 and n.prefixlen < 127:
            out.append(str(n.network_address))
    return out


def _edges_note(pool: Pool, original: str, nets: list[Network]) -> None:
    edges = _edges(nets)
    if edges:
        shown = ", ".join(edges[:8]) + (f" and {len(edges) - 8} more" if len(edges) > 8 else "")
        pool.notes.append(
            f"{original}: l3lb hands out neither the first nor the last address of an IPv4 prefix (the first "
            f"of an IPv6 one) by itself, so {shown} are for requests only (a Service that has one keeps it)"
        )


# ---- selectors


def _selector(raw: Any) -> dict[str, Any] | None:
    """A Kubernetes label selector as l3lb's config takes it (values as strings); None if it is empty."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    labels = raw.get("matchLabels") or {}
    if isinstance(labels, dict) and labels:
        out["matchLabels"] = {str(k): _text(v) for k, v in labels.items()}
    exprs = []
    for e in raw.get("matchExpressions") or []:
        if isinstance(e, dict) and e.get("key") and e.get("operator") in OPERATORS:
            item = {"key": str(e["key"]), "operator": e["operator"]}
            if e["operator"] in ("In", "NotIn"):
                item["values"] = [_text(v) for v in e.get("values") or []]
            exprs.append(item)
    if exprs:
        out["matchExpressions"] = exprs
    return out or None


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _as_selector(raw: dict[str, Any] | None) -> Selector:
    reqs = []
    for k, v in ((raw or {}).get("matchLabels") or {}).items():
        reqs.append(Requirement(k, "In", frozenset([v])))
    for e in (raw or {}).get("matchExpressions") or []:
        reqs.append(Requirement(e["key"], e["operator"], frozenset(e.get("values") or [])))
    return Selector(tuple(reqs))


def _one_of(selectors: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several selectors ORed, as one selector when they can be: each one label on the same key
    (``key=a`` or ``key=b`` is ``key in (a, b)``). None when they cannot."""
    if len(selectors) == 1:
        return selectors[0]
    key, values = None, []
    for s in selectors:
        reqs = _as_selector(s).requirements
        if len(reqs) != 1 or reqs[0].operator != "In" or (key is not None and reqs[0].key != key):
            return None
        key = reqs[0].key
        values += sorted(reqs[0].values)
    return {"matchExpressions": [{"key": key, "operator": "In", "values": sorted(set(values))}]}


def _describe(selectors: list[dict[str, Any]]) -> str:
    return " or ".join(f"({_as_selector(s)})" for s in selectors)


# ---- MetalLB


def _metallb(objects: list[dict[str, Any]], namespaces: Namespaces, out: Imported) -> None:
    pools = [o for o in objects if o.get("kind") == "IPAddressPool"]
    bgp = [o for o in objects if o.get("kind") == "BGPAdvertisement"]
    l2 = [o for o in objects if o.get("kind") == "L2Advertisement"]
    aliases = {
        str(c.get("name")): str(c.get("value"))
        for o in objects
        if o.get("kind") == "Community"
        for c in _spec(o).get("communities") or []
        if isinstance(c, dict)
    }
    for o in objects:
        kind = o.get("kind")
        if kind in ("BGPPeer", "BFDProfile"):
            out.notes.append(
                f"MetalLB {kind} {_where(o)}: no equivalent in l3lb, whose routes go out through the "
                "host's FRR: its BGP sessions (and BFD) are FRR's configuration (services.frr)"
            )
        elif kind not in ("IPAddressPool", "BGPAdvertisement", "L2Advertisement", "Community"):
            out.notes.append(f"MetalLB {kind} {_where(o)}: not read by l3lb import")
    names = {_meta(p).get("name") for p in pools}
    for adv in bgp + l2:
        for name in _spec(adv).get("ipAddressPools") or []:
            if name not in names:
                out.notes.append(
                    f"MetalLB {adv.get('kind')} {_where(adv)}: spec.ipAddressPools names {name}, which is "
                    "not "
                    "among the imported IPAddressPools"
                )
    for adv in bgp + l2:
        if not any(
            _advertises(
                adv,
                str(_meta(p).get("name")),
                {str(k): str(v) for k, v in (_meta(p).get("labels") or {}).items()},
            )
            for p in pools
        ):
            out.notes.append(
                f"MetalLB {adv.get('kind')} {_where(adv)}: applies to none of the imported IPAddressPools"
            )
    if not pools:
        return
    prioritized = any(int((_spec(p).get("serviceAllocation") or {}).get("priority") or 0) for p in pools)
    mine: list[Pool] = []
    for p in pools:
        spec = _spec(p)
        name = str(_meta(p).get("name") or "pool")
        pool = Pool(name, f"MetalLB IPAddressPool {_where(p)}")
        for text in spec.get("addresses") or []:
            try:
                nets, note = _range(text)
            except ValueError as err:
                pool.notes.append(f"spec.addresses {text!r}: not an address range ({err}); left out")
                continue
            pool.prefixes += nets
            if note:
                pool.notes.append(f"spec.addresses: {note}")
            if "-" in str(text) and len(nets) > 1:
                pool.notes.append(f"spec.addresses {text}: as {', '.join(map(str, nets))}")
            if not spec.get("avoidBuggyIPs"):
                _edges_note(pool, f"spec.addresses {text}", nets)
        if spec.get("avoidBuggyIPs"):
            _avoid_buggy(pool)
        pool.auto_assign = spec.get("autoAssign", True) is not False
        allocation = spec.get("serviceAllocation") or {}
        priority = int(allocation.get("priority") or 0)
        pool.order = (0 if priority > 0 else 1, priority, name)
        if priority > 0:
            pool.notes.append(f"serviceAllocation.priority {priority}: the order of the pools here")
        elif prioritized:
            pool.notes.append(
                "serviceAllocation.priority unset: MetalLB takes such pools after those with one, so "
                "does l3lb"
            )
        _metallb_allocation(pool, allocation, namespaces)
        labels = {str(k): str(v) for k, v in (_meta(p).get("labels") or {}).items()}
        applies = [a for a in bgp if _advertises(a, name, labels)]
        _metallb_bgp(pool, applies, aliases)
        l2s = [a for a in l2 if _advertises(a, name, labels)]
        if l2s and not applies:
            pool.notes.append(
                f"L2Advertisement {', '.join(_where(a) for a in l2s)}: MetalLB answers ARP/NDP for these "
                "addresses on the nodes' LAN; l3lb announces them by BGP through the host's FRR, so your "
                "routers must route them to the nodes instead"
            )
        elif not applies:
            pool.notes.append(
                "no BGPAdvertisement among the input selects this pool: MetalLB does not announce it by BGP "
                "(l3lb announces every pool through the host's FRR)"
            )
        mine.append(pool)
    out.pools += sorted(mine, key=lambda p: p.order)


def _avoid_buggy(pool: Pool) -> None:
    """avoidBuggyIPs: no address ending in .0 or .255; those l3lb would hand out become reserved."""
    extra: list[Network] = []
    for n in pool.prefixes:
        if n.version != 4:
            continue
        inner = n.num_addresses > 2 and n.prefixlen < 31
        first, last = int(n.network_address), int(n.broadcast_address)
        for a in range(first, last + 1):
            if a & 0xFF in (0, 255) and not (inner and a in (first, last)):
                extra.append(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/32"))
                if len(extra) > MAX_RESERVED:
                    break
    if len(extra) > MAX_RESERVED:
        pool.notes.append(
            "spec.avoidBuggyIPs: l3lb skips only each prefix's own first and last address; the many other "
            "addresses ending in .0 or .255 inside these prefixes would be handed out (reserve them by hand)"
        )
    elif not extra:
        pool.notes.append(
            "spec.avoidBuggyIPs: what l3lb does here anyway (each prefix's first and last address)"
        )
    else:
        pool.reserved += extra
        pool.notes.append(
            f"spec.avoidBuggyIPs: {', '.join(str(n.network_address) for n in extra)} reserved (they end "
            "in .0 or .255)"
        )


def _metallb_allocation(pool: Pool, allocation: dict[str, Any], namespaces: Namespaces) -> None:
    listed = [str(n) for n in allocation.get("namespaces") or []]
    resolved: set[str] = set(listed)
    selectors = [s for s in (_selector(x) for x in allocation.get("namespaceSelectors") or []) if s]
    for s in selectors:
        found = namespaces.matching(_as_selector(s))
        if found is None:
            pool.notes.append(
                f"serviceAllocation.namespaceSelectors ({_as_selector(s)}): l3lb's pools list namespaces by "
                "name, and no Namespaces were known at import (import from the cluster, or add the Namespace "
                "objects to the files); "
                + (
                    "not included"
                    if listed
                    else "the pool is left open to EVERY namespace: restrict it by hand"
                )
            )
        else:
            resolved |= set(found)
            pool.notes.append(
                f"serviceAllocation.namespaceSelectors ({_as_selector(s)}): resolved at import to "
                f"{', '.join(found) or 'no namespace'}; namespaces labelled later are not included"
            )
    if selectors and not resolved and namespaces.known is not None:
        pool.notes.append("no namespace matches: the pool serves none (MetalLB's too, today)")
        pool.auto_assign = False
    pool.namespaces = sorted(resolved)
    services = [s for s in (_selector(x) for x in allocation.get("serviceSelectors") or []) if s]
    if services:
        one = _one_of(services)
        if one is not None:
            pool.service_selector = one
        else:
            pool.notes.append(
                f"serviceAllocation.serviceSelectors {_describe(services)}: MetalLB takes a Service matching "
                "any of them; l3lb's serviceSelector is one selector. Left open to every Service: label the "
                "Services and select that label"
            )


def _advertises(adv: dict[str, Any], pool: str, labels: Labels) -> bool:
    spec = _spec(adv)
    names = spec.get("ipAddressPools") or []
    selectors = [s for s in (_selector(x) for x in spec.get("ipAddressPoolSelectors") or []) if s]
    if not names and not selectors:
        return True  # no pool named or selected: every pool
    return pool in names or any(_as_selector(s).matches(labels) for s in selectors)


def _metallb_bgp(pool: Pool, advs: list[dict[str, Any]], aliases: dict[str, str]) -> None:
    if not advs:
        return
    node_sets = [[s for s in (_selector(x) for x in _spec(a).get("nodeSelectors") or []) if s] for a in advs]
    if node_sets and all(node_sets):
        flat = [s for group in node_sets for s in group]
        one = _one_of(flat)
        if one is not None:
            pool.node_selector = one
        else:
            pool.notes.append(
                f"nodeSelectors {_describe(flat)} (BGPAdvertisement "
                f"{', '.join(_where(a) for a in advs)}): MetalLB announces from a node matching any of "
                "them; l3lb's nodeSelector is one selector. Left to every node: label those nodes and "
                "select that label"
            )
    per_adv = []
    for a in advs:
        std, large = [], []
        for c in _spec(a).get("communities") or []:
            value = aliases.get(str(c), str(c))
            via = f" (alias {c})" if value != str(c) else ""
            large_value = value[len("large:") :] if value.lower().startswith("large:") else None
            if (
                large_value is not None
                and re.fullmatch(r"\d{1,10}:\d{1,10}:\d{1,10}", large_value)
                and all(int(x) < 2**32 for x in large_value.split(":"))
            ):
                large.append(large_value)
            elif large_value is None and value.lower() in STOPPING:
                pool.notes.append(
                    f"communities {value}{via} (BGPAdvertisement {_where(a)}): {STOPPING[value.lower()]}, "
                    "set "
                    "where the node redistributes, keeps FRR from advertising the routes to the node's own "
                    "eBGP peers; the module refuses it. Tag with a community your routers map to it instead"
                )
            elif re.fullmatch(r"\d{1,5}:\d{1,5}", value) and all(int(x) < 65536 for x in value.split(":")):
                std.append(value)
            else:
                pool.notes.append(
                    f"communities {c!r} (BGPAdvertisement {_where(a)}): not a community l3lb can set "
                    "(an alias without its Community object?); left out"
                )
        per_adv.append((std, large))
        spec = _spec(a)
        if spec.get("localPref"):
            pool.notes.append(
                f"localPref {spec['localPref']} (BGPAdvertisement {_where(a)}): no equivalent; LOCAL_PREF is "
                "for iBGP peers: set it in the host FRR's route-map towards them if you need it"
            )
        for key, host in (("aggregationLength", 32), ("aggregationLengthV6", 128)):
            if spec.get(key) not in (None, host):
                pool.notes.append(
                    f"{key} {spec[key]} (BGPAdvertisement {_where(a)}): no equivalent; l3lb announces "
                    f"host routes (/{host}) only"
                )
        if spec.get("peers"):
            pool.notes.append(
                f"peers {', '.join(map(str, spec['peers']))} (BGPAdvertisement {_where(a)}): no equivalent; "
                "the host's FRR advertises to its own neighbours (filter there per neighbour)"
            )
        if spec.get("serviceSelectors"):
            pool.notes.append(
                f"serviceSelectors (BGPAdvertisement {_where(a)}): no equivalent; l3lb announces every "
                "Service of the pool"
            )
    distinct = {(tuple(s), tuple(lg)) for s, lg in per_adv}
    if len(distinct) == 1:
        std, large = next(iter(distinct))
        pool.communities, pool.large_communities = list(std), list(large)
    else:
        pool.notes.append(
            "communities: the BGPAdvertisements of this pool set different ones; l3lb sets one set per "
            "pool: none set, choose in services.l3lb.pools.<name>.bgp"
        )


# ---- Cilium


def _cilium(objects: list[dict[str, Any]], namespaces: Namespaces, out: Imported) -> None:
    pools = [o for o in objects if o.get("kind") == "CiliumLoadBalancerIPPool"]
    for o in objects:
        if o.get("kind") != "CiliumLoadBalancerIPPool":
            out.notes.append(f"Cilium {o.get('kind')} {_where(o)}: not read by l3lb import")
    if len(pools) > 1:
        out.notes.append(
            "Cilium picks among the pools that allow a Service in no fixed order; l3lb takes the first "
            "(here: by creation, then name); reorder to taste"
        )
    pools.sort(key=lambda p: (str(_meta(p).get("creationTimestamp") or ""), str(_meta(p).get("name"))))
    for index, p in enumerate(pools):
        spec = _spec(p)
        name = str(_meta(p).get("name") or "pool")
        pool = Pool(name, f"Cilium CiliumLoadBalancerIPPool {name}", order=(index,))
        blocks = list(spec.get("blocks") or [])
        if spec.get("cidrs"):
            blocks += spec["cidrs"]
            pool.notes.append("spec.cidrs (deprecated by Cilium for blocks): read as blocks")
        first_last = str(spec.get("allowFirstLastIPs") or "").lower() != "no"
        for b in blocks:
            if not isinstance(b, dict):
                continue
            try:
                if b.get("cidr"):
                    text = str(b["cidr"])
                    nets, note = _range(text)
                    if note:
                        pool.notes.append(f"spec.blocks: {note}")
                    if first_last:
                        _edges_note(pool, f"spec.blocks {text} (allowFirstLastIPs: Yes or unset)", nets)
                    elif any(n.version == 6 and n.prefixlen < 127 for n in nets):
                        pool.reserved += [
                            ipaddress.ip_network(f"{n.broadcast_address}/128")
                            for n in nets
                            if n.version == 6 and n.prefixlen < 127
                        ]
                        pool.notes.append(
                            f"spec.blocks {text} (allowFirstLastIPs: No): its last address reserved too"
                        )
                elif b.get("start"):
                    text = f"{b['start']}-{b.get('stop') or b['start']}"
                    nets, _ = _range(text)
                    if len(nets) > 1:
                        pool.notes.append(
                            f"spec.blocks start {b['start']} stop {b.get('stop')}: as "
                            + ", ".join(map(str, nets))
                        )
                    _edges_note(
                        pool, f"spec.blocks start {b['start']} stop {b.get('stop') or b['start']}", nets
                    )
                else:
                    continue
            except ValueError as err:
                pool.notes.append(f"spec.blocks {b}: not an address block ({err}); left out")
                continue
            pool.prefixes += nets
        if spec.get("disabled"):
            pool.auto_assign = False
            pool.notes.append(
                "spec.disabled: l3lb's autoAssign: false; Services keep what they have, and requests for its "
                "IPs (or naming the pool) are still granted"
            )
        _cilium_selector(pool, _selector(spec.get("serviceSelector")), namespaces)
        out.pools.append(pool)


def _cilium_selector(pool: Pool, selector: dict[str, Any] | None, namespaces: Namespaces) -> None:
    if not selector:
        return
    rest: dict[str, Any] = {}
    labels = dict(selector.get("matchLabels") or {})
    allowed: set[str] | None = None
    if CILIUM_NAMESPACE_KEY in labels:
        allowed = {labels.pop(CILIUM_NAMESPACE_KEY)}
    exprs = []
    for e in selector.get("matchExpressions") or []:
        if e["key"] == CILIUM_NAMESPACE_KEY:
            if e["operator"] == "In":
                allowed = set(e["values"]) if allowed is None else allowed & set(e["values"])
                continue
            found = namespaces.matching(_as_selector({"matchExpressions": [e]}))
            if found is None:
                pool.notes.append(
                    f"spec.serviceSelector {_as_selector({'matchExpressions': [e]})}: on the namespace, and "
                    "no Namespaces were known at import to resolve it: left out, the pool is open to more "
                    "namespaces than in Cilium: restrict it by hand"
                )
            else:
                allowed = set(found) if allowed is None else allowed & set(found)
                pool.notes.append(
                    f"spec.serviceSelector {_as_selector({'matchExpressions': [e]})}: resolved at import to "
                    f"namespaces {', '.join(sorted(found)) or 'none'}; namespaces made later are not included"
                )
            continue
        if e["key"] == CILIUM_NAME_KEY:
            pool.notes.append(
                f"spec.serviceSelector {_as_selector({'matchExpressions': [e]})}: on the Service's name; "
                "l3lb "
                "selects by labels only: left out (label those Services and select the label)"
            )
            continue
        exprs.append(e)
    if CILIUM_NAME_KEY in labels:
        pool.notes.append(
            f"spec.serviceSelector {CILIUM_NAME_KEY}={labels.pop(CILIUM_NAME_KEY)}: on the Service's name; "
            "l3lb selects by labels only: left out (label the Service and select the label)"
        )
    if allowed is not None:
        pool.namespaces = sorted(allowed)
        if not allowed:
            pool.auto_assign = False
            pool.notes.append("spec.serviceSelector: no namespace matches; the pool serves none by itself")
    if labels:
        rest["matchLabels"] = labels
    if exprs:
        rest["matchExpressions"] = exprs
    pool.service_selector = rest or None


# ---- PureLB


def _purelb(objects: list[dict[str, Any]], out: Imported) -> None:
    groups = [o for o in objects if o.get("kind") == "ServiceGroup"]
    for o in objects:
        if o.get("kind") != "ServiceGroup":
            what = {
                "LBNodeAgent": "its interface and ARP settings are for PureLB's own announcements",
                "BGPConfiguration": "the host's FRR peers with the routers (services.frr)",
            }.get(str(o.get("kind")), "not read by l3lb import")
            out.notes.append(f"PureLB {o.get('kind')} {_where(o)}: no equivalent in l3lb ({what})")
    serving: dict[str, list[str]] = {}
    for g in groups:
        for ns in _spec(g).get("namespaces") or []:
            serving.setdefault(str(ns), []).append(str(_meta(g).get("name")))
    mine: list[Pool] = []
    for g in groups:
        spec = _spec(g)
        name = str(_meta(g).get("name") or "group")
        version = str(g.get("apiVersion") or "")
        pool = Pool(name, f"PureLB ServiceGroup {_where(g)} ({version})")
        kind = next(
            (k for k in ("remote", "local", "external", "netbox") if isinstance(spec.get(k), dict)), None
        )
        if kind in ("external", "netbox") or kind is None:
            out.notes.append(
                f"PureLB ServiceGroup {_where(g)}: spec.{kind or '?'}: addresses from an external IPAM; no "
                "equivalent in l3lb (its pools are prefixes): not imported"
            )
            continue
        body = spec[kind]
        entries = []
        for key in ("v4pool", "v6pool"):
            if isinstance(body.get(key), dict):
                entries.append((f"spec.{kind}.{key}", body[key]))
        for key in ("v4pools", "v6pools"):
            entries += [
                (f"spec.{kind}.{key}[{i}]", e)
                for i, e in enumerate(body.get(key) or [])
                if isinstance(e, dict)
            ]
        if body.get("pool"):  # v1: one pool directly under local
            entries.insert(0, (f"spec.{kind}", body))
        for where, entry in entries:
            text = str(entry.get("pool") or "")
            try:
                nets, note = _range(text)
            except ValueError as err:
                pool.notes.append(f"{where}.pool {text!r}: not an address range ({err}); left out")
                continue
            pool.prefixes += nets
            if note:
                pool.notes.append(f"{where}.pool: {note}")
            if "-" in text and len(nets) > 1:
                pool.notes.append(f"{where}.pool {text}: as {', '.join(map(str, nets))}")
            _edges_note(pool, f"{where}.pool {text}", nets)
            aggregation = str(entry.get("aggregation") or "default")
            host = "/128" if nets and nets[0].version == 6 else "/32"
            if aggregation != host:
                pool.notes.append(
                    f"{where}.aggregation {aggregation}: no equivalent; l3lb announces host routes "
                    f"({host}) only"
                )
        if kind == "local":
            pool.notes.append(
                "spec.local: PureLB puts these addresses on the node's LAN interface (ARP/NDP) when the "
                "subnet is the node's"
                + (" and on kube-lb0, routed, when not (v1)" if version.endswith("/v1") else "")
                + "; "
                "l3lb announces them by BGP through the host's FRR: your routers must route them to the nodes"
            )
        for flag in ("multiPool", "balancePools", "skipIPv6DAD"):
            if body.get(flag):
                pool.notes.append(f"spec.{kind}.{flag}: no equivalent in l3lb")
        listed = [str(n) for n in spec.get("namespaces") or []]
        if listed:
            pool.namespaces = sorted(set(listed))
            default_for = [n for n in listed if serving[n] == [name] or spec.get("namespaceDefault")]
            pool.auto_assign = bool(default_for)
            pool.order = (0, name)
            if not spec.get("enforceNamespaces"):
                pool.notes.append(
                    "spec.namespaces without enforceNamespaces: in PureLB a default, not a boundary; l3lb's "
                    "namespaces is a boundary: Services of other namespaces that name this group get "
                    "PoolNotAllowed (those that have one of its IPs keep it)"
                )
            if not pool.auto_assign:
                pool.notes.append(
                    "not the default ServiceGroup of its namespaces (several serve them, none marked "
                    "namespaceDefault): autoAssign false, as PureLB then falls back to its default group"
                )
        elif name == "default":
            pool.order = (2, name)
        else:
            pool.auto_assign = False
            pool.order = (1, name)
            pool.notes.append(
                "PureLB allocates from a ServiceGroup other than default only for Services that name it "
                "(purelb.io/service-group, which l3lb reads): autoAssign false"
            )
        if spec.get("enforceNamespaces"):
            pool.notes.append(
                "spec.enforceNamespaces: l3lb keeps other namespaces out of this pool, but does not keep its "
                "namespaces out of other pools"
            )
        mine.append(pool)
    out.pools += sorted(mine, key=lambda p: p.order)


# ---- the whole


def _unique_names(out: Imported) -> None:
    seen: dict[str, int] = {}
    for pool in out.pools:
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", pool.name)[:60] or "pool"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        if name != pool.name:
            pool.notes.append(f"named {name}: {pool.name!r} is taken or not a valid l3lb pool name")
        seen[name] = 1
        pool.name = name


def _no_overlaps(out: Imported) -> None:
    """Prefixes overlapping an earlier pool's are left out: l3lb refuses overlapping pools (Cilium marks
    the newer of two overlapping pools conflicting and allocates nothing from it; MetalLB refuses them)."""
    kept: list[tuple[str, Network]] = []
    for pool in out.pools:
        mine: list[Network] = []
        for net in pool.prefixes:
            clash = next(
                (
                    f"{n} of {o}"
                    for o, n in kept + [(pool.name, m) for m in mine]
                    if n.version == net.version and n.overlaps(net)
                ),
                None,
            )
            if clash:
                pool.notes.append(f"{net} overlaps {clash}: left out")
            else:
                mine.append(net)
        pool.prefixes = mine
        pool.reserved = [
            r for r in pool.reserved if any(r.subnet_of(p) for p in mine if p.version == r.version)
        ]  # type: ignore[arg-type]
        kept += [(pool.name, n) for n in mine]
    for pool in [p for p in out.pools if not p.prefixes]:
        why = [n for n in pool.notes if n.endswith("left out")] or ["none given"]
        out.notes.append(f"{pool.source}: no addresses left to import ({'; '.join(why)})")
    out.pools = [p for p in out.pools if p.prefixes]


def config_doc(imported: Imported) -> dict[str, Any]:
    """The agent's config file as data (what ``l3lb run --config`` parses)."""
    return {"pools": [_agent(p) for p in imported.pools]}


def _agent(p: Pool) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": p.name, "prefixes": [str(n) for n in p.prefixes]}
    if p.reserved:
        doc["reserved"] = [str(n) for n in p.reserved]
    if not p.auto_assign:
        doc["autoAssign"] = False
    if p.namespaces:
        doc["namespaces"] = p.namespaces
    if p.service_selector:
        doc["serviceSelector"] = p.service_selector
    if p.node_selector:
        doc["nodeSelector"] = p.node_selector
    return doc


def check(imported: Imported) -> None:
    """The agent's own parser on the output (ConfigError if it refuses it, which would be a bug here)."""
    parse(config_doc(imported))


# ---- printing


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in text.splitlines() or [""]]


def _header(imported: Imported, tool: str) -> list[str]:
    lines = [f"Imported by `l3lb import` from {', '.join(imported.sources) or 'nothing'}.", tool]
    return lines + [f"- {n}" for n in imported.notes]


def to_yaml(imported: Imported) -> str:
    head = _header(
        imported,
        "For `l3lb run --config FILE`. BGP communities have no place here: they are FRR's, set with the "
        "NixOS "
        "module (l3lb import -o nix) or in FRR's route-map by hand.",
    )
    lines = [line for h in head for line in _comment(h, "")]
    lines.append("pools:" if imported.pools else "pools: []")
    for p in imported.pools:
        lines += _comment(p.source, "  ")
        notes = list(p.notes)
        if p.communities or p.large_communities:
            notes.append(
                "BGP attributes (the module: services.l3lb.pools.<name>.bgp): "
                + "; ".join(
                    x
                    for x in (
                        f"communities {' '.join(p.communities)}" if p.communities else "",
                        f"large communities {' '.join(p.large_communities)}" if p.large_communities else "",
                    )
                    if x
                )
            )
        lines += [c for n in notes for c in _comment(f"- {n}", "  ")]
        doc = _agent(p)
        first = True
        for key, value in doc.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {json.dumps(value)}")
            first = False
    return "\n".join(lines) + "\n"


def _nix_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _nix(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _nix_string(value)
    if isinstance(value, list):
        return "[ " + " ".join(_nix(v) for v in value) + (" ]" if value else "]")
    if isinstance(value, dict):
        return (
            "{ "
            + " ".join(f"{_nix_string(k)} = {_nix(v)};" for k, v in value.items())
            + (" }" if value else "}")
        )
    raise TypeError(f"no Nix for {value!r}")


def to_nix(imported: Imported) -> str:
    head = _header(
        imported,
        "For the module: services.l3lb.pools = <this>; (priority: the order in which l3lb takes the pools).",
    )
    lines = [line for h in head for line in _comment(h, "")]
    lines.append("{")
    for i, p in enumerate(imported.pools):
        lines += _comment(p.source, "  ")
        lines += [c for n in p.notes for c in _comment(f"- {n}", "  ")]
        doc = _agent(p)
        del doc["name"]
        lines.append(f"  {_nix_string(p.name)} = {{")
        for key, value in doc.items():
            lines.append(f"    {key} = {_nix(value)};")
        lines.append(f"    priority = {(i + 1) * 10};")
        if p.communities:
            lines.append(f"    bgp.communities = {_nix(p.communities)};")
        if p.large_communities:
            lines.append(f"    bgp.largeCommunities = {_nix(p.large_communities)};")
        lines.append("  };")
    lines.append("}")
    return "\n".join(lines) + "\n"
