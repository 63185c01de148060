"""The traps of moving a cluster to l3lb, as ``l3lb check`` finds them (pure functions over what the API
and FRR say; l3lb/cli/check.py runs them):

- another load balancer controller still writes status.loadBalancer on Services of our class
  (managedFields: a field manager that is not this group of agents', written after ours);
- a Service of ours whose IPs l3lb would change when it takes over (outside the pools, refused by the
  sharing rules, another pool named), with the reason;
- the other projects' annotations on Services of ours, where l3lb reads them otherwise than their project
  did (l3lb/aliases.py: disagreeing aliases, values l3lb cannot honour, syntax the project refused);
- the node's FRR redistributing connected routes beyond l3lb's prefixes: ``redistribute connected`` with
  no route-map, or with one that permits more (a kube-vip VIP on every node's interface, the node's own
  addresses), kube-vip PR #1442.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import aliases
from ..config import Config, Network
from ..ipam.assign import assign
from ..model import Service, field_manager, fmt_key, is_ours, parse_service

KNOWN_MANAGERS = {
    "controller": "MetalLB's controller (its binary is named controller)",
    "cilium-operator-lb-ipam": "Cilium's LB IPAM",
    "kube-vip": "kube-vip",
    "allocator": "PureLB's allocator",
    "k3s": "k3s (ServiceLB)",
}


def who(manager: str) -> str:
    if manager.startswith("l3lb/"):
        return f"{manager} (another group of l3lb agents, Lease namespace {manager[5:]})"
    known = KNOWN_MANAGERS.get(manager)
    return f"{manager} ({known})" if known else manager


OK, WARN, FAIL = "ok", "warn", "fail"  # as l3lb/cli/check.py's
LEAK_FIX = (
    "let out only what l3lb puts on lo: 'redistribute connected route-map L3LB-V4' (and L3LB-V6) with the "
    "prefix-lists of l3lb's prefixes (NixOS: services.l3lb.frr.enable; nixos/frr.nix); another load "
    "balancer's VIPs on the nodes' interfaces, the nodes' own addresses and pod networks otherwise go out "
    "with them (kube-vip PR #1442)"
)


def takeover(
    objects: list[dict[str, Any]], config: Config, lease_namespace: str
) -> list[tuple[str, str, str, str]]:
    """(check, status, message, fix) for the LoadBalancer Services ``objects`` (API objects): another
    controller still writing status on ours, IPs the allocator would change, annotations read otherwise."""
    ours = [o for o in objects if is_ours(parse_service(o), config)]
    manager = field_manager(lease_namespace)
    found: list[tuple[str, str, str, str]] = []
    for writer, names in sorted(foreign_writers(ours, manager).items()):
        found.append(
            (
                "takeover",
                FAIL,
                f"status.loadBalancer of {len(names)} Service(s) of ours was written by "
                f"{who(writer)} after l3lb, if at all: {', '.join(names[:5])}"
                + (" ..." if len(names) > 5 else ""),
                "once `l3lb check` shows no Service that would move, stop that controller (or give its "
                "Services a loadBalancerClass l3lb does not own); the elected l3lb agent then takes "
                "their status over, IPs unchanged (README: Coming from MetalLB)",
            )
        )
    services = [parse_service(o) for o in ours]
    for move in moves(services, config.pools, manager):
        found.append(
            (
                "takeover",
                FAIL,
                f"{move.service} would move from {', '.join(move.now)} to "
                f"{', '.join(move.then) or 'nothing'}" + (f": {'; '.join(move.why)}" if move.why else ""),
                "request its IPs with l3lb.io/load-balancer-ips, or add their prefix to a pool (l3lb "
                "import prints the other project's pools as l3lb's)",
            )
        )
    for obj, svc in zip(ours, services, strict=True):
        for text in [m for _, m in svc.notes] + read_otherwise(obj):
            found.append(
                (
                    "annotations",
                    WARN,
                    f"{fmt_key(svc.key)}: {text}",
                    "set l3lb's own annotation (l3lb.io/load-balancer-ips, l3lb.io/allow-shared-ip, "
                    "l3lb.io/address-pool), which l3lb reads first, and drop the other project's",
                )
            )
    if not found:
        found.append(
            (
                "takeover",
                OK,
                f"{len(ours)} Service(s) of ours: status written by l3lb or by nobody, every IP kept",
                "",
            )
        )
    return found


# ---- status written by someone else


def status_entries(obj: dict[str, Any]) -> dict[str, str]:
    """manager -> time of its last write, for the managedFields entries that own status.loadBalancer."""
    out: dict[str, str] = {}
    for m in (obj.get("metadata") or {}).get("managedFields") or []:
        fields = ((m.get("fieldsV1") or {}).get("f:status")) or {}
        if m.get("subresource") == "status" and "f:loadBalancer" in fields:
            manager = m.get("manager") or ""
            out[manager] = max(out.get(manager, ""), m.get("time") or "")
    return out


def foreign_writers(objects: Iterable[dict[str, Any]], ours: str) -> dict[str, list[str]]:
    """Per field manager other than ``ours``: the Services (of ours: the caller filters) whose
    status.loadBalancer it wrote last, or that we never took over."""
    out: dict[str, list[str]] = {}
    for obj in objects:
        entries = status_entries(obj)
        mine = entries.get(ours)
        for manager, when in entries.items():
            if manager != ours and (mine is None or when > mine):
                out.setdefault(manager, []).append(fmt_key(parse_service(obj).key))
    return out


# ---- what the takeover would change


@dataclass
class Move:
    service: str
    now: tuple[str, ...]
    then: tuple[str, ...]
    why: list[str] = field(default_factory=list)


def moves(services: list[Service], pools: tuple, field_manager: str) -> list[Move]:
    """Services of ours whose status l3lb's allocator would change, with the reasons it gives."""
    result = assign(services, pools, field_manager)
    reasons: dict[Any, list[str]] = {}
    for c in result.conflicts:
        if c.reason not in (aliases.ANNOTATION_CONFLICT, aliases.UNSUPPORTED):
            reasons.setdefault(c.key, []).append(f"{c.reason}: {c.message}")
    out = []
    for s in services:
        then = result.ips.get(s.key, ())
        if s.ingress_ips and then != s.ingress_ips:
            out.append(Move(fmt_key(s.key), s.ingress_ips, then, reasons.get(s.key, [])))
    return out


# ---- annotations read otherwise


def read_otherwise(obj: dict[str, Any]) -> list[str]:
    """What l3lb reads otherwise than the annotation's own project did, beyond what aliases.read says as
    Warnings (which the caller adds): syntax the project refused and l3lb accepts."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    spec = obj.get("spec") or {}
    out = []
    raw = annotations.get(aliases.PURELB_IPS)
    if raw is not None and raw != raw.replace(" ", ""):
        out.append(
            f"{aliases.PURELB_IPS}={raw!r}: PureLB refuses spaces in it (no address allocated); l3lb "
            "accepts them and requests these IPs"
        )
    if raw is not None and not raw.strip():
        out.append(f"{aliases.PURELB_IPS} is empty: PureLB refuses it; l3lb reads no request")
    read = aliases.read(annotations, spec)
    for family in ("IPv4", "IPv6"):
        ips = [ip for ip in read.requested if (":" in ip) == (family == "IPv6")]
        if len(ips) > 1 and read.request_source:
            out.append(
                f"{read.request_source} asks for {len(ips)} {family} addresses ({', '.join(ips)}); l3lb "
                f"gives a Service one per family, the first ({ips[0]})"
            )
    for key in (aliases.METALLB_IPS, aliases.METALLB_IPS_OLD):
        if (annotations.get(key) or "").strip() and (spec.get("loadBalancerIP") or "").strip():
            out.append(
                f"{key} and spec.loadBalancerIP are both set: MetalLB refuses the Service; l3lb reads {key}"
            )
            break
    return out


# ---- FRR


@dataclass
class _Entry:
    action: str
    matches: list[tuple[str, str]] = field(default_factory=list)


def redistribution_leaks(running: str, prefixes: tuple[Network, ...]) -> list[tuple[bool, str]]:
    """Each ``redistribute connected`` that lets out more than host routes inside ``prefixes``: with no
    route-map, or through a route-map with a permit entry not bounded by a prefix-list inside them.
    (certain, phrase) per finding, certain False where the entry matches on something else (a tag, a
    metric) that this cannot judge; empty when there is none."""
    lists: dict[str, list[tuple[str, Network | None]]] = {}
    maps: dict[str, list[tuple[int, _Entry]]] = {}
    redistributions: list[tuple[str, str | None]] = []
    current: _Entry | None = None
    family, in_bgp = "ipv4", False
    for raw in running.splitlines():
        line = raw.strip()
        if not line:
            continue
        if raw[:1] not in (" ", "\t"):  # a top-level line ends the block before it
            current, in_bgp, family = None, line.startswith("router bgp"), "ipv4"
        m = re.match(r"(ip|ipv6) prefix-list (\S+) (?:seq \d+ )?(permit|deny) (\S+)", line)
        if m:
            lists.setdefault(m.group(2), []).append(
                (m.group(3), None if m.group(4) == "any" else _net(m.group(4)))
            )
            continue
        m = re.match(r"route-map (\S+) (permit|deny) (\d+)", line)
        if m:
            current = _Entry(m.group(2))
            maps.setdefault(m.group(1), []).append((int(m.group(3)), current))
            continue
        if current is not None and line.startswith("match "):
            m = re.match(r"match (ip|ipv6) address prefix-list (\S+)", line)
            if m:
                current.matches.append(("ipv4" if m.group(1) == "ip" else "ipv6", m.group(2)))
            elif line.startswith("match interface "):
                current.matches.append(("interface", line.split()[2]))
            else:
                current.matches.append(("other", line[len("match ") :]))
            continue
        m = re.match(r"address-family (ipv4|ipv6) unicast", line)
        if m and in_bgp:
            family = m.group(1)
            continue
        if line == "exit-address-family":
            family = "ipv4"
            continue
        m = re.match(r"redistribute connected(?: route-map (\S+))?", line)
        if m and in_bgp:
            redistributions.append((family, m.group(1)))
    out = []
    for fam, route_map in redistributions:
        ours = [p for p in prefixes if (p.version == 6) == (fam == "ipv6")]
        where = f"'redistribute connected' under address-family {fam} unicast"
        if route_map is None:
            out.append((True, f"{where} has no route-map: every connected route goes out, not only l3lb's"))
            continue
        for seq, entry in sorted(maps.get(route_map, []), key=lambda x: x[0]):  # a missing one denies all
            if entry.action == "permit":
                leak = _entry_leak(entry, fam, ours, lists)
                if leak:
                    out.append((leak[0], f"{where} through route-map {route_map}: entry {seq} {leak[1]}"))
    return out


def _net(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _entry_leak(
    entry: _Entry, fam: str, ours: list[Network], lists: dict[str, list[tuple[str, Network | None]]]
) -> tuple[bool, str] | None:
    """Why a permit entry lets out more than l3lb's host routes of family ``fam``, or None."""
    if any(kind in ("ipv4", "ipv6") and kind != fam for kind, _ in entry.matches):
        return None  # a match on the other family's prefix-list: matches no route of this one
    prefix_lists = [name for kind, name in entry.matches if kind == fam]
    for name in prefix_lists:
        for action, net in lists.get(name, []):  # a missing prefix-list matches nothing
            if action != "permit":
                continue
            if net is None:
                return True, f"matches prefix-list {name}, which permits any"
            if not any(net.version == p.version and net.subnet_of(p) for p in ours):  # type: ignore[arg-type]
                return True, f"matches prefix-list {name}, which permits {net}, outside l3lb's prefixes"
    if prefix_lists:
        return None
    others = [name for kind, name in entry.matches if kind == "other"]
    if others:
        return (
            False,
            f"matches '{'; '.join(others)}' and no prefix-list: it may let out more than l3lb's prefixes",
        )
    interfaces = [name for kind, name in entry.matches if kind == "interface"]
    if interfaces:
        return True, f"permits every connected route on {', '.join(interfaces)}, not only l3lb's prefixes"
    return True, "permits every connected route (it matches no prefix-list)"
