"""Change trackers: the cluster state the decision needs, updated from watch events, O(change) each.

Handlers only record: a no-op update (one that leaves the parsed value equal) costs a comparison and marks
nothing. ``update()`` then re-decides just the Services marked dirty (all of them only when this node's
eligibility flips, or the agent begins to stop) and keeps, per IP, which Services have it, so a shared IP
stays announced while any of them wants it, and drains while any would announce it but for a graceful
reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Config
from ..model import NODE, SERVICES, SLICES, Key, Node, Service, SliceSummary, WatchEvent, is_ours
from .decide import (
    AGENT_STOPPING,
    GRACEFUL,
    Counts,
    IPDecision,
    ServiceDecision,
    combine,
    decide_service,
    ip_weight,
    node_reason,
    unselected_pools,
)


class Tracker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.services: dict[Key, Service] = {}  # ours only
        self.slices: dict[Key, SliceSummary] = {}
        self.counts: dict[Key, Counts] = {}
        """Per Service: its ready endpoints, the most of any address family (each family's slices list the
        same pods, so a dual-stack Service's pods are not counted twice)."""
        self._family_counts: dict[Key, dict[str, Counts]] = {}
        self.node: Node | None = None
        self.stopping = False
        """The agent is stopping: every IP it holds drains (``set_stopping``)."""
        self.node_why: str | None = node_reason(None, config)
        self.unselected: frozenset[str] = unselected_pools(None, config)
        self.decisions: dict[Key, ServiceDecision] = {}
        self.by_ip: dict[str, dict[Key, ServiceDecision]] = {}
        self.announced: set[str] = set()
        self.weights: dict[str, int] = {}
        """Announced IPs of Local Services: their weight (most local ready endpoints among the sharers)."""
        self.holds: dict[str, float] = {}
        """Announced IPs with a hold-down: seconds their reason to announce must last first."""
        self.draining: set[str] = set()
        """IPs not announced for a graceful reason that would be otherwise: they drain before they go."""
        self.released: dict[str, Key] = {}
        """IPs that lost their last Service in the latest update(), with that Service: for log lines."""
        self._dirty: set[Key] = set()
        self._all_dirty = False

    # ---- recording (watch handlers)
    def record(self, m: WatchEvent) -> None:
        """Records one watch event (a relist, a change or a deletion) of Services, slices or our Node."""
        if m.kind == "REPLACE":
            if m.resource == SERVICES:
                self.replace_services(m.value)
            elif m.resource == SLICES:
                self.replace_slices(m.value)
            else:
                self.set_node(m.value[0][1] if m.value else None)
        elif m.resource == SERVICES:
            self.delete_service(m.value[0]) if m.kind == "DELETE" else self.set_service(m.value[1])
        elif m.resource == SLICES:
            self.delete_slice(m.value[0]) if m.kind == "DELETE" else self.set_slice(*m.value)
        elif m.resource == NODE:
            self.set_node(None if m.kind == "DELETE" else m.value[1])

    def set_service(self, svc: Service) -> bool:
        """Records an added or modified Service; True if it changed anything we track."""
        if not is_ours(svc, self.config):
            return self.delete_service(svc.key)
        if self.services.get(svc.key) == svc:
            return False
        self.services[svc.key] = svc
        self._dirty.add(svc.key)
        return True

    def delete_service(self, key: Key) -> bool:
        if self.services.pop(key, None) is None:
            return False
        self._dirty.add(key)
        return True

    def replace_services(self, entries: Iterable[tuple[Key, Service]]) -> None:
        """A relist: the full set of Services, diffed against what we hold."""
        seen = set()
        for key, svc in entries:
            seen.add(key)
            self.set_service(svc)
        for key in self.services.keys() - seen:
            self.delete_service(key)

    def set_slice(self, key: Key, new: SliceSummary) -> bool:
        old = self.slices.get(key)
        if old == new:
            return False
        self.slices[key] = new
        self._count(old, -1)
        self._count(new, +1)
        return True

    def delete_slice(self, key: Key) -> bool:
        old = self.slices.pop(key, None)
        self._count(old, -1)
        return old is not None

    def replace_slices(self, entries: Iterable[tuple[Key, SliceSummary]]) -> None:
        seen = set()
        for key, summary in entries:
            seen.add(key)
            self.set_slice(key, summary)
        for key in self.slices.keys() - seen:
            self.delete_slice(key)

    def _count(self, s: SliceSummary | None, sign: int) -> None:
        if s is None or s.service is None or not (s.ready or s.local_ready):
            return
        families = self._family_counts.setdefault(s.service, {})
        c = families.get(s.family, Counts())
        c = Counts(c.ready + sign * s.ready, c.local_ready + sign * s.local_ready)
        if c.ready or c.local_ready:
            families[s.family] = c
        else:
            families.pop(s.family, None)
        if families:
            ready = max(f.ready for f in families.values())
            self.counts[s.service] = Counts(ready, max(f.local_ready for f in families.values()))
        else:
            del self._family_counts[s.service]
            self.counts.pop(s.service, None)
        if s.service in self.services:
            self._dirty.add(s.service)

    def set_node(self, node: Node | None) -> bool:
        if node == self.node:
            return False
        self.node = node
        self._eligibility()
        return True

    def set_stopping(self) -> None:
        """The agent begins to stop: nothing is announced any more, and what would be drains."""
        self.stopping = True
        self._eligibility()

    def _eligibility(self) -> None:
        why = node_reason(self.node, self.config)
        if self.stopping and (why is None or why in GRACEFUL):
            why = AGENT_STOPPING
        unselected = unselected_pools(self.node, self.config)
        if why != self.node_why or unselected != self.unselected:
            self.node_why = why
            self.unselected = unselected
            self._all_dirty = True

    # ---- deciding
    @property
    def pending(self) -> bool:
        return self._all_dirty or bool(self._dirty)

    def update(self) -> set[str]:
        """Re-decides what changed and updates ``announced``; returns the IPs whose holders or decisions
        changed (a superset of those whose announcement changed): what an incremental sync must plan."""
        keys = self._dirty | (self.services.keys() | self.decisions.keys() if self._all_dirty else set())
        self._dirty = set()
        self._all_dirty = False
        self.released = {}
        touched: set[str] = set()
        for key in keys:
            svc = self.services.get(key)
            new = (
                decide_service(
                    svc, self.counts.get(key, Counts()), self.node_why, self.config, self.unselected
                )
                if svc
                else None
            )
            old = self.decisions.get(key)
            if old == new:
                continue
            if old is not None:
                del self.decisions[key]
                for ip in old.ips:
                    holders = self.by_ip[ip]
                    del holders[key]
                    if not holders:
                        del self.by_ip[ip]
                        self.released[ip] = key
                    touched.add(ip)
            if new is not None:
                self.decisions[key] = new
                for ip in new.ips:
                    self.by_ip.setdefault(ip, {})[key] = new
                    self.released.pop(ip, None)
                    touched.add(ip)
        for ip in touched:
            holders = self.by_ip.get(ip) or {}
            announcing = [d for d in holders.values() if d.announces(ip)]
            if announcing:
                self.announced.add(ip)
                self.draining.discard(ip)
                weight = ip_weight(holders)
                if weight:
                    self.weights[ip] = weight
                else:
                    self.weights.pop(ip, None)
                hold = min(d.hold_down for d in announcing)
                if hold:
                    self.holds[ip] = hold
                else:
                    self.holds.pop(ip, None)
            else:
                self.announced.discard(ip)
                self.weights.pop(ip, None)
                self.holds.pop(ip, None)
                if any(d.drains(ip) for d in holders.values()):
                    self.draining.add(ip)
                else:
                    self.draining.discard(ip)
        return touched

    def explain(self, ip: str) -> IPDecision | None:
        holders = self.by_ip.get(ip)
        return combine({ip: holders}, self.config)[ip] if holders else None
