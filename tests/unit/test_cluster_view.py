"""The leader's view of every node (``ClusterView``) against the agents' own code: after any history of
Services, EndpointSlices and Nodes, fed incrementally, each node's decision for each Service is the one
that node's agent makes (its own Tracker, fed the same objects from scratch)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from l3lb.config import Config
from l3lb.ipam.pools import parse as parse_pools
from l3lb.model import (
    WatchEvent,
    is_ours,
    node_entry,
    parse_node,
    parse_service,
    parse_slice,
    slice_by_node_entry,
)
from l3lb.node.cluster import NODES, SLICES_BY_NODE, ClusterView
from l3lb.node.tracker import Tracker

POOLS = parse_pools(
    {
        "pools": [
            {"name": "any", "prefixes": ["10.0.100.0/25", "fd00:100::/64"]},
            {"name": "edge", "prefixes": ["10.0.100.128/25"], "nodeSelector": {"matchLabels": {"edge": "y"}}},
        ]
    }
)
CFG = Config(prefixes=(), node_name="leader", pools=POOLS)
NODE_NAMES = ["n1", "n2", "n3", "n4"]
SVC_NAMES = ["a", "b", "c"]
IPS = ["10.0.100.5", "10.0.100.130", "fd00:100::5", "192.0.2.9"]  # any, edge, any (v6), outside


def svc_obj(name: str, ips: list[str], local: bool, lb_class: str | None) -> dict:
    spec = {"type": "LoadBalancer", "externalTrafficPolicy": "Local" if local else "Cluster"}
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": name},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


def slice_obj(name: str, svc: str, family: str, endpoints: list[tuple[str, bool, bool]]) -> dict:
    return {
        "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
        "endpoints": [
            {"nodeName": node, "conditions": {"ready": ready, "terminating": term}}
            for node, ready, term in endpoints
        ],
    }


def node_obj(
    name: str, ready: bool, excluded: bool, cordoned: bool, edge: bool, going: str | None = None
) -> dict:
    """``going``: the l3lb.io/drain annotation, the autoscaler's taint or a deletionTimestamp (issue #20)."""
    labels = {"edge": "y"} if edge else {}
    if excluded:
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    meta: dict = {"name": name, "labels": labels}
    spec: dict = {"unschedulable": cordoned}
    if going == "drain":
        meta["annotations"] = {"l3lb.io/drain": "true"}
    elif going == "taint":
        spec["taints"] = [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]
    elif going == "deleting":
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {
        "metadata": meta,
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


event = st.one_of(
    st.tuples(
        st.just("svc"),
        st.sampled_from(SVC_NAMES),
        st.lists(st.sampled_from(IPS), max_size=3, unique=True),
        st.booleans(),
        st.sampled_from([None, "other"]),
    ),
    st.tuples(st.just("delsvc"), st.sampled_from(SVC_NAMES)),
    st.tuples(
        st.just("slice"),
        st.sampled_from(["s1", "s2", "s3", "s4"]),
        st.sampled_from(SVC_NAMES),
        st.sampled_from(["IPv4", "IPv6"]),
        st.lists(st.tuples(st.sampled_from(NODE_NAMES), st.booleans(), st.booleans()), max_size=4),
    ),
    st.tuples(st.just("delslice"), st.sampled_from(["s1", "s2", "s3", "s4"])),
    st.tuples(
        st.just("node"),
        st.sampled_from(NODE_NAMES),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.sampled_from([None, "drain", "taint", "deleting"]),
    ),
    st.tuples(st.just("delnode"), st.sampled_from(NODE_NAMES)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(event, min_size=1, max_size=6), min_size=1, max_size=8))
def test_every_nodes_decision_is_its_agents(batches: list) -> None:
    view = ClusterView(CFG)
    view.record(WatchEvent(NODES, "REPLACE", [], 0.0))
    view.record(WatchEvent(SLICES_BY_NODE, "REPLACE", [], 0.0))
    services: dict[str, dict] = {}
    slices: dict[str, dict] = {}
    nodes: dict[str, dict] = {}
    seen: dict = {}
    for batch in batches:
        for e in batch:
            kind = e[0]
            if kind == "svc":
                obj = services[e[1]] = svc_obj(*e[1:])
                svc = parse_service(obj)
                view.set_service(svc) if is_ours(svc, CFG) else view.delete_service(svc.key)
            elif kind == "delsvc" and services.pop(e[1], None):
                view.delete_service(("ns", e[1]))
            elif kind == "slice":
                obj = slices[e[1]] = slice_obj(*e[1:])
                view.record(WatchEvent(SLICES_BY_NODE, "SET", slice_by_node_entry(obj), 0.0))
            elif kind == "delslice" and (obj := slices.pop(e[1], None)):
                view.record(WatchEvent(SLICES_BY_NODE, "DELETE", slice_by_node_entry(obj), 0.0))
            elif kind == "node":
                obj = nodes[e[1]] = node_obj(*e[1:])
                view.record(WatchEvent(NODES, "SET", node_entry(obj), 0.0))
            elif kind == "delnode" and (obj := nodes.pop(e[1], None)):
                view.record(WatchEvent(NODES, "DELETE", node_entry(obj), 0.0))
        # As the keeper does: only what take_dirty() names is decided again; the rest must still be right.
        for key in view.take_dirty():
            seen[key] = view.announcement(key)
        ours = {s.key: s for s in map(parse_service, services.values()) if is_ours(s, CFG)}
        assert set(view.services) == set(ours)
        agents = {}
        for name, obj in nodes.items():
            t = Tracker(dataclasses.replace(CFG, node_name=name))
            t.replace_services((s.key, s) for s in map(parse_service, services.values()))
            t.replace_slices((("ns", n), parse_slice(o, name)) for n, o in slices.items())
            t.set_node(parse_node(obj))
            t.update()
            agents[name] = t
        for key, svc in ours.items():
            ann = seen[key]
            assert ann == view.announcement(key), "decided again whenever it changed"
            decisions = {name: t.decisions[key] for name, t in sorted(agents.items())}
            assert ann.nodes == tuple(
                (name, d.reason, any(d.announces(ip) for ip in d.ips)) for name, d in decisions.items()
            )
            if decisions:
                in_prefix = [ip for ip in svc.ingress_ips if CFG.in_prefix(ip)]
                assert ann.unannounced == tuple(
                    ip for ip in in_prefix if not any(d.announces(ip) for d in decisions.values())
                )


def test_a_change_marks_only_what_it_can_change() -> None:
    """A slice marks its Service; a node marks everything only when what the decision reads of it changes
    (not a label that no pool selects)."""
    view = ClusterView(CFG)
    for name in SVC_NAMES:
        view.set_service(parse_service(svc_obj(name, ["10.0.100.5"], True, None)))
    view.record(WatchEvent(NODES, "REPLACE", [node_entry(node_obj("n1", True, False, False, False))], 0.0))
    view.take_dirty()
    view.record(
        WatchEvent(
            SLICES_BY_NODE,
            "SET",
            slice_by_node_entry(slice_obj("s1", "b", "IPv4", [("n1", True, False)])),
            0.0,
        )
    )
    assert view.take_dirty() == {("ns", "b")}
    relabelled = node_obj("n1", True, False, False, False)
    relabelled["metadata"]["labels"]["team"] = "x"
    view.record(WatchEvent(NODES, "SET", node_entry(relabelled), 0.0))
    assert view.take_dirty() == set(), "nothing the decision reads"
    view.record(WatchEvent(NODES, "SET", node_entry(node_obj("n1", True, False, False, True)), 0.0))
    assert view.take_dirty() == {("ns", n) for n in SVC_NAMES}, "its pools changed: every Service"
    cordoned = node_obj("n1", False, False, True, True)
    view.record(WatchEvent(NODES, "SET", node_entry(cordoned), 0.0))
    assert view.take_dirty() == set(), "neither a cordon nor Ready is a reason (issue #20)"
    view.record(WatchEvent(NODES, "SET", node_entry(node_obj("n1", False, False, True, True, "drain")), 0.0))
    assert view.take_dirty() == {("ns", n) for n in SVC_NAMES}, "a drain: every Service"
