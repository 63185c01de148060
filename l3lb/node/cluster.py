"""Every node's decision for every Service of ours, kept from watch events: the view the allocator's leader
writes the ``l3lb.io/Announced`` condition from.

It is the agents' own decision (``decide_service`` with each node's ``node_reason`` and unselected pools)
applied to every Node with the ready endpoints on it, so it follows their rules as they change. It holds
all Nodes and, per Service, its ready endpoints per node (``SliceByNode``), which an agent does not keep:
the leader builds it only while it leads. Updates are O(what changed); a Service is decided again only
when its own slices or value change, and all of them only when a node is added, removed, or changes
eligibility or pool selection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Config
from ..model import Key, Node, Service, SliceByNode, WatchEvent
from .decide import Counts, ServiceDecision, decide_service, node_reason, unselected_pools

NODES, SLICES_BY_NODE = "nodes", "endpointslices by node"
"""The resources of the leader's own watches (all Nodes; slices with their ready endpoints per node)."""

Eligibility = tuple[str | None, frozenset[str]]
"""What the decision reads of a node: why it may announce nothing (None: it may), and the pools whose node
selector it does not match."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """Where one Service is announced, as every node decides from the API."""

    nodes: tuple[tuple[str, str, bool], ...]
    """(node, reason token, announces one of its IPs or more), by node name."""
    unannounced: tuple[str, ...]
    """Its IPs inside our prefixes that no node announces."""
    node_reasons: frozenset[str]
    """The reasons among ``nodes`` that are about a node (not Ready, excluded, ...) rather than about the
    Service (its endpoints, its IPs)."""

    @property
    def by(self) -> list[str]:
        return [n for n, _, yes in self.nodes if yes]

    @property
    def not_by(self) -> dict[str, str]:
        return {n: why for n, why, yes in self.nodes if not yes}


class ClusterView:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.services: dict[Key, Service] = {}
        self.slices: dict[Key, SliceByNode] = {}
        self.nodes: dict[str, Eligibility] = {}
        self._names: list[str] | None = None
        """``nodes``' names, sorted (None: to sort again, after a node came or went)."""
        self._ready: dict[Key, dict[str, int]] = {}
        """Per Service, per address family: its ready endpoints."""
        self._local: dict[Key, dict[str, dict[str, int]]] = {}
        """Per Service, per address family: its ready endpoints per node (nodes with none left out)."""
        self._dirty: set[Key] = set()
        self._all_dirty = False

    # ---- recording
    def record(self, m: WatchEvent) -> None:
        """One event of the leader's watches (NODES or SLICES_BY_NODE)."""
        if m.resource == NODES:
            if m.kind == "REPLACE":
                self.replace_nodes(node for _, node in m.value)
            elif m.kind == "DELETE":
                self.delete_node(m.value[0][1])
            else:
                self.set_node(m.value[1])
        elif m.kind == "REPLACE":
            self.replace_slices(m.value)
        elif m.kind == "DELETE":
            self.delete_slice(m.value[0])
        else:
            self.set_slice(*m.value)

    def set_service(self, svc: Service) -> None:
        if self.services.get(svc.key) != svc:
            self.services[svc.key] = svc
            self._dirty.add(svc.key)

    def delete_service(self, key: Key) -> None:
        if self.services.pop(key, None) is not None:
            self._dirty.discard(key)

    def set_node(self, node: Node) -> None:
        seen = (node_reason(node, self.config), unselected_pools(node, self.config))
        if self.nodes.get(node.name) != seen:
            if node.name not in self.nodes:
                self._names = None
            self.nodes[node.name] = seen
            self._all_dirty = True

    def delete_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self._names = None
            self._all_dirty = True

    def replace_nodes(self, nodes: Iterable[Node]) -> None:
        seen = set()
        for node in nodes:
            seen.add(node.name)
            self.set_node(node)
        for name in self.nodes.keys() - seen:
            self.delete_node(name)

    def set_slice(self, key: Key, new: SliceByNode) -> None:
        old = self.slices.get(key)
        if old != new:
            self.slices[key] = new
            self._count(old, -1)
            self._count(new, +1)

    def delete_slice(self, key: Key) -> None:
        self._count(self.slices.pop(key, None), -1)

    def replace_slices(self, entries: Iterable[tuple[Key, SliceByNode]]) -> None:
        seen = set()
        for key, value in entries:
            seen.add(key)
            self.set_slice(key, value)
        for key in self.slices.keys() - seen:
            self.delete_slice(key)

    def _count(self, s: SliceByNode | None, sign: int) -> None:
        if s is None or s.service is None or not s.ready:
            return
        ready = self._ready.setdefault(s.service, {})
        ready[s.family] = ready.get(s.family, 0) + sign * s.ready
        local = self._local.setdefault(s.service, {}).setdefault(s.family, {})
        for node, n in s.by_node:
            left = local.get(node, 0) + sign * n
            if left:
                local[node] = left
            else:
                del local[node]
        if not ready[s.family]:
            del ready[s.family], self._local[s.service][s.family]
        if not ready:
            del self._ready[s.service], self._local[s.service]
        if s.service in self.services:
            self._dirty.add(s.service)

    # ---- deciding
    def take_dirty(self) -> set[Key]:
        """The Services whose announcement may have changed since the last call."""
        dirty = set(self.services) if self._all_dirty else self._dirty & self.services.keys()
        self._dirty, self._all_dirty = set(), False
        return dirty

    def announcement(self, key: Key) -> Announcement:
        """Every node's decision for one Service of ours, as its agent makes it: the ready endpoints of each
        address family counted apart, the most of any family taken (the agents' Tracker does the same)."""
        svc = self.services[key]
        local_by_node: dict[str, int] = {}  # the nodes with ready endpoints (few); any other has none
        for family in self._local.get(key, {}).values():
            for name, n in family.items():
                if n > local_by_node.get(name, 0):
                    local_by_node[name] = n
        ready = max(self._ready.get(key, {}).values(), default=0)
        # Nodes alike in what the decision reads decide alike: one decision per (eligibility, local count).
        decided: dict[tuple[Eligibility, int], tuple[ServiceDecision, str, bool]] = {}
        if self._names is None:
            self._names = sorted(self.nodes)
        nodes = []
        for name in self._names:
            group = (self.nodes[name], local_by_node.get(name, 0))
            one = decided.get(group)
            if one is None:
                (why, unselected), local = group
                d = decide_service(svc, Counts(ready, local), why, self.config, unselected)
                one = decided[group] = (d, d.reason, any(d.announces(ip) for ip in d.ips))
            nodes.append((name, one[1], one[2]))
        ips = next(iter(decided.values()))[0].ips if decided else ()
        covered = {ip for d, _, _ in decided.values() for ip in d.ips if d.announces(ip)}
        return Announcement(
            tuple(nodes),
            tuple(ip for ip in ips if ip not in covered),
            frozenset(seen[0] for seen, _ in decided if seen[0] is not None),
        )
