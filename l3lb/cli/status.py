"""``l3lb status``: for one node, our Services, their IPs, local ready endpoints, whether the node announces
them and why not (the reason tokens of the logs), the hold-downs and drains under way (from the running
agent's metrics), and what FRR does with each address."""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import Config
from ..k8s.api import Api, pages
from ..model import (
    NODE,
    SERVICES,
    SLICES,
    SliceSummary,
    fmt_key,
    is_ours,
    key_of,
    parse_node,
    parse_slice,
    service_entry,
    serving,
    watched,
)
from ..node.decide import Counts
from ..node.tracker import Tracker
from .frr import Vtysh


@dataclass
class Row:
    service: str
    ips: list[str]
    policy: str
    local_ready: int
    ready: int
    announced: bool
    reason: str
    detail: str
    weight_class: str | None = None
    """With weighted anycast: the interface the decision puts its IPs on (lo for Cluster Services)."""
    on_interface: list[str] | None = None
    """IPs found on our interfaces, as "ip" or "ip@interface" off the main one (only on this node)."""
    frr: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per IP: {"rib": connected route in zebra, "peers": BGP peers it is advertised to}."""
    timers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per IP under a timer of the running agent: {"timer": "hold-down" (announced when it ends, if its
    reason lasts) or "drain" (withdrawn when it ends), "seconds": how long it still runs}."""


TIMER_GAUGES = {"l3lb_hold_down_until_seconds": "hold-down", "l3lb_drain_until_seconds": "drain"}


def agent_timers(address: tuple[str, int], timeout: float = 2.0) -> dict[str, tuple[str, float]] | None:
    """The running agent's hold-downs and drains, from its metrics: IP -> (timer, seconds left); None when
    it does not answer there."""
    host, port = address
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    now, out = time.time(), {}
    for line in text.splitlines():
        name, _, rest = line.partition('{ip="')
        if name in TIMER_GAUGES and '"} ' in rest:
            ip, _, value = rest.partition('"} ')
            out[ip] = (TIMER_GAUGES[name], max(0.0, float(value) - now))
    return out


def snapshot(api: Api, config: Config) -> Tracker:
    """One read of what the agent watches, decided by the agent's own Tracker."""
    lists = {
        resource: [parse(obj) for obj in _items(api, path, selectors)]
        for resource, (path, selectors, parse) in watched(config.node_name).items()
    }
    tracker = Tracker(config)
    tracker.replace_services(lists[SERVICES])
    tracker.replace_slices(lists[SLICES])
    tracker.set_node(lists[NODE][0][1] if lists[NODE] else None)
    tracker.update()
    return tracker


def collect(
    api: Api,
    config: Config,
    *,
    present: dict[str, str] | None,
    vtysh: Vtysh | None,
    timers: dict[str, tuple[str, float]] | None = None,
) -> list[Row]:
    """``present``: the IPs on our interfaces (IP -> interface), when looking at this node; ``timers``: the
    running agent's (``agent_timers``)."""
    tracker = snapshot(api, config)
    rows = []
    for key in sorted(tracker.services):
        svc = tracker.services[key]
        c = tracker.counts.get(key, Counts())
        d = tracker.decisions[key]
        row = Row(
            fmt_key(key),
            list(svc.ingress_ips),
            "Local" if svc.local_policy else "Cluster",
            c.local_ready,
            c.ready,
            d.announce,
            d.reason,
            d.detail,
        )
        if config.weight_classes and d.announce:
            row.weight_class = config.class_interface(d.weight) if d.weight else config.interface
        if present is not None:
            row.on_interface = [
                ip if present[ip] == config.interface else f"{ip}@{present[ip]}"
                for ip in d.ips
                if ip in present
            ]
        if vtysh is not None:
            for ip in d.ips:
                rib, peers = vtysh.route(ip)
                row.frr[ip] = {"rib": rib, "peers": peers}
        for ip in d.ips:
            if timers and ip in timers:
                row.timers[ip] = {"timer": timers[ip][0], "seconds": round(timers[ip][1], 1)}
        rows.append(row)
    return rows


@dataclass
class ClusterRow:
    service: str
    pool: str
    ips: list[str]
    policy: str
    announced_by: list[str]
    not_by: dict[str, str]
    """Node -> the reason it does not announce (the reason tokens of the logs)."""


def cluster(api: Api, config: Config) -> list[ClusterRow]:
    """Every Service of ours, with the nodes that announce it and why the others do not: one list of
    Services, EndpointSlices and Nodes, decided for each node by the agent's own Tracker."""
    paths = watched(config.node_name)
    services = [service_entry(obj) for obj in _items(api, *paths[SERVICES][:2])]
    slices = _items(api, *paths[SLICES][:2])
    nodes = [parse_node(obj) for obj in _items(api, "/api/v1/nodes", {})]
    # Each slice parsed once: its ready endpoints per node, then a summary per node from that.
    local: list[tuple[Any, SliceSummary, Counter[str]]] = []
    for obj in slices:
        summary = parse_slice(obj, "")
        per_node = Counter(ep.get("nodeName") or "" for ep in obj.get("endpoints") or [] if serving(ep))
        local.append((key_of(obj), summary, per_node))
    announced: dict[Any, list[str]] = {}
    refused: dict[Any, dict[str, str]] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        tracker = Tracker(dataclasses.replace(config, node_name=node.name))
        tracker.replace_services(services)
        tracker.replace_slices(
            (key, dataclasses.replace(summary, local_ready=per_node[node.name]))
            for key, summary, per_node in local
        )
        tracker.set_node(node)
        tracker.update()
        for key, d in tracker.decisions.items():
            if any(d.announces(ip) for ip in d.ips):
                announced.setdefault(key, []).append(node.name)
            else:
                refused.setdefault(key, {})[node.name] = d.reason
    rows = []
    ours = {key: svc for key, svc in services if is_ours(svc, config)}
    for key in sorted(ours):
        svc = ours[key]
        pool = config.pool_of(svc.ingress_ips[0]) if svc.ingress_ips else None
        rows.append(
            ClusterRow(
                fmt_key(key),
                pool.name if pool else "-",
                list(svc.ingress_ips),
                "Local" if svc.local_policy else "Cluster",
                announced.get(key, []),
                refused.get(key, {}),
            )
        )
    return rows


def _items(api: Api, path: str, selectors: dict[str, str]) -> list[dict[str, Any]]:
    return [obj for page in pages(api, path, selectors) for obj in page.get("items") or []]


def cluster_table(rows: list[ClusterRow]) -> str:
    lines = [["SERVICE", "POOL", "IPS", "POLICY", "ANNOUNCED BY", "NOT ANNOUNCED BY"]]
    for r in rows:
        by_reason: dict[str, list[str]] = {}
        for node, reason in r.not_by.items():
            by_reason.setdefault(reason, []).append(node)
        lines.append(
            [
                r.service,
                r.pool,
                ",".join(r.ips) or "-",
                r.policy,
                ",".join(r.announced_by) or "-",
                " ".join(f"{','.join(nodes)} ({reason})" for reason, nodes in sorted(by_reason.items()))
                or "-",
            ]
        )
    return _columns(lines)


def as_json(rows: list[Row], node: str) -> dict[str, Any]:
    return {"node": node, "services": [asdict(r) for r in rows]}


def table(rows: list[Row], *, local: bool, frr: bool, weighted: bool = False, timers: bool = False) -> str:
    header = ["SERVICE", "IPS", "POLICY", "LOCAL READY", "ANNOUNCED", "REASON"]
    if timers:
        header.append("PENDING")
    if weighted:
        header.append("WEIGHT CLASS")
    if local:
        header.append("ON INTERFACE")
    if frr:
        header.append("FRR")
    lines = [header]
    for r in rows:
        cells = [
            r.service,
            ",".join(r.ips) or "-",
            r.policy,
            str(r.local_ready),
            "yes" if r.announced else "no",
            r.reason,
        ]
        if timers:
            cells.append(" ".join(_pending(ip, t) for ip, t in r.timers.items()) or "-")
        if weighted:
            cells.append(r.weight_class or "-")
        if local:
            cells.append(",".join(r.on_interface or []) or "-")
        if frr:
            cells.append(
                " ".join(
                    f"{ip}: {'rib' if s['rib'] else 'not in rib'}, {s['peers']} peer"
                    f"{'' if s['peers'] == 1 else 's'}"
                    for ip, s in r.frr.items()
                )
                or "-"
            )
        lines.append(cells)
    return _columns(lines)


def _pending(ip: str, t: dict[str, Any]) -> str:
    what = "announced" if t["timer"] == "hold-down" else "withdrawn"
    return f"{ip}: {what} in {t['seconds']:.0f}s ({t['timer']})"


def _columns(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
