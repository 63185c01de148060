"""What each condition says, as a pure function of a Service, the allocator's decision for it and every
node's decision (``l3lb/node/cluster.py``). No I/O, no clock: the same inputs give the same text, so a new
leader writes nothing where nothing changed.

Reasons are CamelCase as metav1.Condition asks: the allocator's conflict reasons as they are
(``UnknownPool``, ``PoolExhausted``, ...), the agents' reason tokens with a capital (``noLocalReadyEndpoint``
becomes ``NoLocalReadyEndpoint``). Messages are bounded: a group of more than NAMED nodes is counted rather
than named, and a message longer than MAX_MESSAGE counts every group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..config import Config
from ..ipam.allocator import STATUS_CONFLICT, Assigned
from ..ipam.assign import (
    INVALID_IPS,
    IP_IN_USE,
    IP_OUTSIDE_POOL,
    NO_POOL_ALLOWED,
    NO_POOL_FOR_FAMILY,
    POOL_EXHAUSTED,
    POOL_NOT_ALLOWED,
    UNKNOWN_POOL,
)
from ..model import CONDITION_PREFIX, Condition, Service
from ..node.cluster import Announcement
from ..node.decide import NODE_NOT_SELECTED

ALLOCATED = f"{CONDITION_PREFIX}Allocated"
ANNOUNCED = f"{CONDITION_PREFIX}Announced"
TYPES = (ALLOCATED, ANNOUNCED)
NAMED = 5
"""A group of nodes (those that announce, those that do not for one reason) is named up to this many."""
MAX_MESSAGE = 1024
"""Characters; metav1.Condition allows 32,768. Past this (long node names), groups are only counted."""
FROM_API = "as the agents decide from the API, not read from the nodes (l3lb status shows what a node holds)"
REFUSALS = frozenset(
    {
        IP_IN_USE,
        IP_OUTSIDE_POOL,
        INVALID_IPS,
        POOL_EXHAUSTED,
        NO_POOL_FOR_FAMILY,
        UNKNOWN_POOL,
        POOL_NOT_ALLOWED,
        NO_POOL_ALLOWED,
        STATUS_CONFLICT,
    }
)
"""Conflicts by which a Service lacks what it asked for; the others (annotations read otherwise, a second IP
of a family ignored) are Warning Events only."""


def capital(token: str) -> str:
    return token[:1].upper() + token[1:]


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def allocated(a: Assigned, config: Config) -> Condition | None:
    """``l3lb.io/Allocated``; None while the allocator's own status write for it is on its way (what it
    decided is not in status yet, or a takeover), unless it yields that status to another controller: a
    condition written meanwhile would only meet a conflict."""
    svc = a.svc
    refusals = [(r, m) for r, m in a.conflicts if r in REFUSALS]
    if (a.writing or a.ips != svc.ingress_ips) and STATUS_CONFLICT not in (r for r, _ in refusals):
        return None
    if refusals:
        reason = refusals[0][0]
        message = "; ".join(dict.fromkeys(m for _, m in refusals))
        return _condition(svc, ALLOCATED, False, reason, _bounded(message))
    if not svc.ingress_ips:
        return _condition(svc, ALLOCATED, False, "NoIngressIP", "no IP in status.loadBalancer.ingress")
    by_pool: dict[str, list[str]] = {}
    for ip in svc.ingress_ips:
        pool = config.pool_of(ip)
        by_pool.setdefault(pool.name if pool else "?", []).append(ip)
    message = "; ".join(f"{', '.join(ips)} from pool {name}" for name, ips in by_pool.items())
    return _condition(svc, ALLOCATED, True, "Allocated", message)


def announced(svc: Service, ann: Announcement) -> Condition:
    """``l3lb.io/Announced``: True when each of its IPs is announced by a node or more."""
    if not ann.nodes:
        return _condition(svc, ANNOUNCED, False, "NoNodes", f"no Node in the cluster; {FROM_API}")
    yes = [(n, why) for n, why, announces in ann.nodes if announces]
    no = [(n, why) for n, why, announces in ann.nodes if not announces]
    message = _announced_text(yes, no, ann.unannounced, NAMED)
    if len(message) > MAX_MESSAGE:
        message = _bounded(_announced_text(yes, no, ann.unannounced, 0))
    if yes and not ann.unannounced:
        return _condition(svc, ANNOUNCED, True, capital(_most(why for _, why in yes)), message)
    if yes:
        return _condition(svc, ANNOUNCED, False, capital(NODE_NOT_SELECTED), message)
    about_service = [why for _, why in no if why not in ann.node_reasons]
    return _condition(svc, ANNOUNCED, False, capital(_most(about_service or [why for _, why in no])), message)


def _announced_text(
    yes: list[tuple[str, str]], no: list[tuple[str, str]], unannounced: Iterable[str], named: int
) -> str:
    def names(nodes: list[str]) -> str:
        return (
            ", ".join(nodes) if len(nodes) <= named else f"{len(nodes)} node{'' if len(nodes) == 1 else 's'}"
        )

    by_reason: dict[str, list[str]] = {}
    for node, why in no:
        by_reason.setdefault(why, []).append(node)
    groups = ", ".join(
        f"{names(nodes)} ({why})"
        for why, nodes in sorted(by_reason.items(), key=lambda i: (-len(i[1]), i[0]))
    )
    if not yes:
        return f"announced by no node: {groups}; {FROM_API}"
    text = f"announced by {names([n for n, _ in yes])}" + (f"; not by {groups}" if groups else "")
    missing = ", ".join(unannounced)
    return text + (f"; {missing} by no node (its pool's node selector)" if missing else "") + f"; {FROM_API}"


def _most(reasons: Iterable[str]) -> str:
    """The most frequent reason, the first by name among equals."""
    counts = Counter(reasons)
    return min(counts, key=lambda r: (-counts[r], r))


def _condition(svc: Service, kind: str, ok: bool, reason: str, message: str) -> Condition:
    return Condition(kind, "True" if ok else "False", reason, message, svc.generation)
