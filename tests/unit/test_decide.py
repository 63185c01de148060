"""Unit and property tests of the pure parts: parsing, the decision, the trackers and the address plan."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from objects import node_obj, slice_obj, svc_obj

from l3lb.config import Config, parse_prefixes
from l3lb.model import Node, is_ours, parse_duration, parse_node, parse_requested, parse_service, parse_slice
from l3lb.netlink.tables import MemoryTable, Present
from l3lb.node.decide import (
    AGENT_STOPPING,
    GRACEFUL,
    LOCAL_READY,
    NO_LOCAL_READY,
    NO_READY,
    NODE_CORDONED,
    NODE_DELETING,
    NODE_DRAINING,
    NODE_EXCLUDED,
    NODE_MISSING,
    NODE_TO_BE_DELETED,
    OUTSIDE_PREFIX,
    READY,
    Counts,
    combine,
    decide,
    decide_service,
    node_reason,
    unselected_pools,
)
from l3lb.node.plan import plan
from l3lb.node.tracker import Tracker

CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24", "fd00:100::/64"]), node_name="n1")
NODE_OK = Node("n1")
EXCLUDE = "node.kubernetes.io/exclude-from-external-load-balancers"
TAINT = [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]


# ---- config and parsing
def test_prefixes_are_checked() -> None:
    assert [str(p) for p in parse_prefixes(["10.0.0.0/24, fd00::/64"])] == ["10.0.0.0/24", "fd00::/64"]
    for bad, msg in [
        (["10.0.0.0/8", "10.1.0.0/16"], "overlap"),
        (["10.0.0.1/24"], "host bits"),
        (["banana"], "invalid prefix"),
        ([], "at least one"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_prefixes(bad)


def test_requested_ips() -> None:
    assert parse_requested({"l3lb.io/load-balancer-ips": " 10.0.100.5, fd00:100:0::5 "}, {}) == (
        ("10.0.100.5", "fd00:100::5"),
        None,
    )
    assert parse_requested({}, {"loadBalancerIP": "10.0.100.6"}) == (("10.0.100.6",), None)
    ips, err = parse_requested(
        {"l3lb.io/load-balancer-ips": "10.0.100.5,nope"}, {"loadBalancerIP": "10.0.100.6"}
    )
    assert ips == () and "'nope' is not an IP address" in err and "annotation" in err


def test_slice_counts_only_ready_non_terminating_endpoints() -> None:
    s = parse_slice(
        slice_obj(
            "s",
            "web",
            [
                ("n1", True, False),
                ("n1", None, False),
                ("n1", True, True),
                ("n2", True, False),
                ("n2", False, False),
            ],
        ),
        "n1",
    )
    assert (s.service, s.ready, s.local_ready) == (("default", "web"), 3, 2)


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (None, NODE_MISSING),
        ({}, None),
        # KEP-3458: the Ready condition is no reason (the service controller stopped following it in 1.27).
        ({"ready": False}, None),
        # The exclude label's value as cloud-provider's nodeIncludedPredicate reads it since 1.34.
        ({"labels": {EXCLUDE: "true"}}, NODE_EXCLUDED),
        ({"labels": {EXCLUDE: "True"}}, NODE_EXCLUDED),
        ({"labels": {EXCLUDE: ""}}, NODE_EXCLUDED),
        ({"labels": {EXCLUDE: "karpenter"}}, NODE_EXCLUDED),
        ({"labels": {EXCLUDE: "false"}}, None),
        ({"labels": {EXCLUDE: "0"}}, None),
        ({"labels": {EXCLUDE: "F"}}, None),
        # A cordon is no reason by default (Kubernetes since 1.19; MetalLB #2470, reverted in #2715).
        ({"unschedulable": True}, None),
        ({"taints": TAINT}, NODE_TO_BE_DELETED),
        ({"deleting": True}, NODE_DELETING),
        ({"annotations": {"l3lb.io/drain": "true"}}, NODE_DRAINING),
        ({"annotations": {"l3lb.io/drain": "1"}}, NODE_DRAINING),
        ({"annotations": {"l3lb.io/drain": "false"}}, None),
        ({"annotations": {"l3lb.io/drain": "yes"}}, None),
        # First match wins: what withdraws at once before what drains.
        ({"deleting": True, "labels": {EXCLUDE: "true"}}, NODE_DELETING),
        ({"labels": {EXCLUDE: "true"}, "annotations": {"l3lb.io/drain": "true"}}, NODE_EXCLUDED),
    ],
)
def test_node_eligibility(node: dict | None, reason: str | None) -> None:
    assert node_reason(None if node is None else parse_node(node_obj(**node)), CFG) == reason


def test_a_cordon_withdraws_only_with_withdraw_on_cordon() -> None:
    cordoned = parse_node(node_obj(unschedulable=True))
    assert node_reason(cordoned, CFG) is None
    old = Config(prefixes=CFG.prefixes, node_name="n1", withdraw_on_cordon=True)
    assert node_reason(cordoned, old) == NODE_CORDONED
    assert node_reason(parse_node(node_obj(unschedulable=True, taints=TAINT)), old) == NODE_TO_BE_DELETED


def test_an_unreadable_drain_annotation_is_a_note_and_no_drain() -> None:
    node = parse_node(node_obj(annotations={"l3lb.io/drain": "yes"}))
    assert not node.drain
    ((reason, message),) = node.notes
    assert reason == "InvalidAnnotation"
    assert (
        message.startswith("l3lb.io/drain: 'yes' is neither true nor false") and "does not drain" in message
    )
    assert parse_node(node_obj(annotations={"l3lb.io/drain": "false"})).notes == ()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("0", 0.0), ("1.5h", 5400.0), ("2us", 2e-6)],
)
def test_durations_as_go_reads_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "-10s", "", "s", "10sec", "ten seconds", "1m-5s"])
def test_what_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


def test_the_hold_down_annotation_and_its_bad_values() -> None:
    assert parse_service(svc_obj("web", [], hold="10s")).hold_down == 10.0
    assert parse_service(svc_obj("web", [])).hold_down is None
    bad = parse_service(svc_obj("web", [], hold="-5s"))
    assert bad.hold_down is None
    ((reason, message),) = bad.notes
    assert reason == "InvalidAnnotation"
    assert "l3lb.io/announce-hold-down: '-5s' is not a duration" in message
    assert "--announce-hold-down applies" in message
    svc = parse_service(svc_obj("web", ["10.0.100.5"], policy="Cluster", hold="garbage"))
    held = Config(prefixes=CFG.prefixes, node_name="n1", announce_hold_down=7.0)
    assert decide_service(svc, Counts(1, 0), None, held).hold_down == 7.0, "the default applies"
    svc = parse_service(svc_obj("web", ["10.0.100.5"], policy="Cluster", hold="2s"))
    assert decide_service(svc, Counts(1, 0), None, held).hold_down == 2.0, "the annotation wins"


# ---- the decision
@pytest.mark.parametrize(
    ("policy", "counts", "announce", "reason", "detail"),
    [
        ("Local", Counts(3, 2), True, LOCAL_READY, "2 local ready endpoints"),
        ("Local", Counts(3, 0), False, NO_LOCAL_READY, "no local ready endpoint"),
        ("Cluster", Counts(1, 0), True, READY, "1 ready endpoint"),
        ("Cluster", Counts(0, 0), False, NO_READY, "no ready endpoint"),
    ],
)
def test_decide_service(policy: str, counts: Counts, announce: bool, reason: str, detail: str) -> None:
    svc = parse_service(svc_obj("web", ["10.0.100.5", "192.0.2.1"], policy=policy))
    d = decide_service(svc, counts, None, CFG)
    assert (d.announce, d.reason, d.detail, d.ips, d.outside) == (
        announce,
        reason,
        detail,
        ("10.0.100.5",),
        ("192.0.2.1",),
    )
    assert decide_service(svc, counts, NODE_CORDONED, CFG).announce is False
    # A graceful reason drains what would be announced, and only that.
    for why in (NODE_DRAINING, NODE_TO_BE_DELETED, NODE_DELETING, AGENT_STOPPING):
        d = decide_service(svc, counts, why, CFG)
        assert (d.announce, d.reason, d.draining) == (False, why, announce)
    assert decide_service(svc, counts, NODE_EXCLUDED, CFG).draining is False, "excluded: withdrawn at once"


def test_ips_outside_the_prefix_are_never_announced() -> None:
    svc = parse_service(svc_obj("web", ["192.0.2.1"], policy="Cluster"))
    d = decide_service(svc, Counts(5, 5), None, CFG)
    assert (d.announce, d.reason) == (False, OUTSIDE_PREFIX)
    assert decide({svc.key: svc}, {svc.key: Counts(5, 5)}, NODE_OK, CFG) == {}


def test_shared_ip_is_announced_while_any_sharer_wants_it() -> None:
    a = parse_service(svc_obj("a", ["10.0.100.5"]))
    b = parse_service(svc_obj("b", ["10.0.100.5"]))
    out = decide({a.key: a, b.key: b}, {b.key: Counts(1, 1)}, NODE_OK, CFG)
    assert out["10.0.100.5"].announce and out["10.0.100.5"].services == (a.key, b.key)
    out = decide({a.key: a, b.key: b}, {}, NODE_OK, CFG)
    assert not out["10.0.100.5"].announce


def test_the_weight_of_an_ip_is_its_local_ready_endpoints() -> None:
    """For weighted anycast: a Local Service's weight is its local ready endpoints; sharers (one selector)
    give the most of theirs; a Cluster Service, or one not announced, weighs nothing."""
    a = parse_service(svc_obj("a", ["10.0.100.5"]))
    b = parse_service(svc_obj("b", ["10.0.100.5"]))
    c = parse_service(svc_obj("c", ["10.0.100.6"], policy="Cluster"))
    counts = {a.key: Counts(3, 3), b.key: Counts(5, 2), c.key: Counts(4, 4)}
    out = decide({a.key: a, b.key: b, c.key: c}, counts, NODE_OK, CFG)
    assert out["10.0.100.5"].weight == 3 and out["10.0.100.6"].weight == 0
    draining = parse_node(node_obj(annotations={"l3lb.io/drain": "true"}))
    assert decide({a.key: a}, counts, draining, CFG)["10.0.100.5"].weight == 0


def test_a_shared_ip_drains_while_a_sharer_would_announce_it_and_takes_the_shortest_hold_down() -> None:
    a = parse_service(svc_obj("a", ["10.0.100.5"], policy="Cluster", hold="10s"))
    b = parse_service(svc_obj("b", ["10.0.100.5"], policy="Cluster", hold="3s"))
    both = {a.key: Counts(1, 0), b.key: Counts(1, 0)}
    out = decide({a.key: a, b.key: b}, both, NODE_OK, CFG)["10.0.100.5"]
    assert out.announce and out.hold_down == 3.0
    out = decide({a.key: a, b.key: b}, {a.key: Counts(1, 0)}, NODE_OK, CFG)["10.0.100.5"]
    assert out.announce and out.hold_down == 10.0, "only the announcing ones count"
    draining = parse_node(node_obj(annotations={"l3lb.io/drain": "true"}))
    out = decide({a.key: a, b.key: b}, {b.key: Counts(1, 0)}, draining, CFG)["10.0.100.5"]
    assert (out.announce, out.draining, out.reason) == (False, True, NODE_DRAINING)
    out = decide({a.key: a, b.key: b}, {}, draining, CFG)["10.0.100.5"]
    assert (out.announce, out.draining) == (False, False), "nothing to drain: nothing would be announced"


def test_an_ip_listed_twice_in_status_is_one_ip() -> None:
    """Status that lists an IP twice (or spelled two ways) is held, changed and released as one IP: the
    tracker's update once raised KeyError on it, failing every sync while the old IP stayed announced."""
    twice = svc_obj("web", ["10.0.100.5", "10.0.100.5", "fd00:100::5", "FD00:100:0::5"], policy="Cluster")
    svc = parse_service(twice)
    assert svc.ingress_ips == ("10.0.100.5", "fd00:100::5")
    t = Tracker(CFG)
    t.set_node(NODE_OK)
    t.set_slice(("default", "s"), parse_slice(slice_obj("s", "web", [("n2", True, False)]), "n1"))
    t.set_service(svc)
    assert t.update() == {"10.0.100.5", "fd00:100::5"} and t.announced == {"10.0.100.5", "fd00:100::5"}
    t.set_service(parse_service(svc_obj("web", ["10.0.100.6", "10.0.100.6"], policy="Cluster")))
    assert t.update() == {"10.0.100.5", "fd00:100::5", "10.0.100.6"}
    assert t.announced == {"10.0.100.6"}


# ---- trackers against the full decision (property)
IPS = ["10.0.100.1", "10.0.100.2", "fd00:100::3", "192.0.2.9"]
SVC_NAMES = ["a", "b", "c"]
event = st.one_of(
    st.tuples(
        st.just("svc"),
        st.sampled_from(SVC_NAMES),
        st.lists(st.sampled_from(IPS), max_size=3),  # duplicates too: status may list an IP twice
        st.sampled_from(["Local", "Cluster"]),
        st.sampled_from([None, "l3lb.io/l3lb", "other"]),
        st.sampled_from(["LoadBalancer", "ClusterIP"]),
        st.sampled_from([None, "5s", "1m", "bad"]),
    ),
    st.tuples(st.just("delsvc"), st.sampled_from(SVC_NAMES)),
    st.tuples(
        st.just("slice"),
        st.sampled_from(["s1", "s2", "s3", "s4"]),
        st.sampled_from(SVC_NAMES),
        st.lists(
            st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from([True, False, None]), st.booleans()),
            max_size=3,
        ),
    ),
    st.tuples(st.just("delslice"), st.sampled_from(["s1", "s2", "s3", "s4"])),
    st.tuples(
        st.just("node"),
        st.sampled_from([None, "ok", "notready", "cordoned", "draining", "tainted", "deleting", "excluded"]),
    ),
    st.tuples(st.just("stop")),
)
NODES = {
    "ok": {},
    "notready": {"ready": False},
    "cordoned": {"unschedulable": True},
    "draining": {"annotations": {"l3lb.io/drain": "true"}},
    "tainted": {"taints": TAINT},
    "deleting": {"deleting": True},
    "excluded": {"labels": {EXCLUDE: "true"}},
}


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=40))
def test_incremental_tracker_matches_the_full_decision(events: list) -> None:
    t = Tracker(CFG)
    raw_services: dict = {}
    for ev in events:
        if ev[0] == "svc":
            _, name, ips, policy, cls, typ, hold = ev
            obj = svc_obj(name, ips, policy=policy, lb_class=cls, svc_type=typ, hold=hold)
            raw_services[("default", name)] = parse_service(obj)
            t.set_service(parse_service(obj))
        elif ev[0] == "delsvc":
            raw_services.pop(("default", ev[1]), None)
            t.delete_service(("default", ev[1]))
        elif ev[0] == "slice":
            obj = slice_obj(ev[1], ev[2], ev[3])
            obj["addressType"] = "IPv6" if ev[1] in ("s3", "s4") else "IPv4"
            t.set_slice(("default", ev[1]), parse_slice(obj, "n1"))
        elif ev[0] == "delslice":
            t.delete_slice(("default", ev[1]))
        elif ev[0] == "stop":
            t.set_stopping()
        else:
            t.set_node(None if ev[1] is None else parse_node(node_obj(**NODES[ev[1]])))
        t.update()
        per_family: dict = {}
        for s in t.slices.values():
            if s.service:
                c = per_family.get((s.service, s.family), Counts())
                per_family[(s.service, s.family)] = Counts(c.ready + s.ready, c.local_ready + s.local_ready)
        counts: dict = {}
        for (svc, _), c in per_family.items():
            old = counts.get(svc, Counts())
            counts[svc] = Counts(max(old.ready, c.ready), max(old.local_ready, c.local_ready))
        counts = {k: c for k, c in counts.items() if c.ready or c.local_ready}
        full = decide(raw_services, counts, t.node, CFG)
        if t.stopping:
            full = _stopping(raw_services, counts, t.node)
        assert t.announced == {ip for ip, d in full.items() if d.announce}
        assert {ip: t.explain(ip) for ip in t.by_ip} == full
        assert t.weights == {ip: d.weight for ip, d in full.items() if d.announce and d.weight}
        assert t.holds == {ip: d.hold_down for ip, d in full.items() if d.announce and d.hold_down}
        assert t.draining == {ip for ip, d in full.items() if d.draining}


def _stopping(services: dict, counts: dict, node: Node | None) -> dict:
    """The full decision of an agent that stops: agentStopping, unless the node withdraws at once anyway."""
    why = node_reason(node, CFG)
    why = AGENT_STOPPING if why is None or why in GRACEFUL else why
    by_ip: dict = {}
    for key, svc in services.items():
        if is_ours(svc, CFG):
            d = decide_service(svc, counts.get(key, Counts()), why, CFG, unselected_pools(node, CFG))
            for ip in d.ips:
                by_ip.setdefault(ip, {})[key] = d
    return combine(by_ip, CFG)


# ---- the address plan (property)
ip_text = st.one_of(
    st.integers(0, 300).map(lambda i: str(ipaddress.ip_address("10.0.99.200") + i)),
    st.integers(0, 5).map(lambda i: f"fd00:100::{i}"),
    st.integers(0, 5).map(lambda i: f"fd00:200::{i}"),
)
interface = st.sampled_from(["lo", "l3lbw1", "l3lbw2"])
present_map = st.dictionaries(
    ip_text, st.builds(Present, st.one_of(st.none(), st.floats(-10, 100)), interface), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ip_text, interface, max_size=12), present_map, st.sampled_from([0, 3, 60]))
def test_plan_converges_and_never_leaves_the_prefixes(desired: dict, present: dict, lifetime: int) -> None:
    cfg = Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=lifetime)
    p = plan(desired, present, cfg, now=0.0)
    touched = p.add + p.renew + p.remove
    assert all(cfg.in_prefix(ip) for ip, _ in touched)
    assert not {(ip, i) for ip, i in p.remove} & set(desired.items()), (
        "never removes what is wanted where it is"
    )
    table = MemoryTable(clock=lambda: 0.0, interfaces=("lo", "l3lbw1", "l3lbw2"))
    table.addresses = dict(present)
    for ip, interface in p.remove:  # as the agent does: removals (a move's first half) first
        table.remove(ip, interface)
    for ip, interface in p.add + p.renew:
        table.set(ip, lifetime, interface)
    after = table.dump()
    assert {ip: v.interface for ip, v in after.items() if cfg.in_prefix(ip)} == {
        ip: i for ip, i in desired.items() if cfg.in_prefix(ip)
    }
    assert {ip: v for ip, v in after.items() if not cfg.in_prefix(ip)} == {
        ip: v for ip, v in present.items() if not cfg.in_prefix(ip)
    }
    assert not plan(desired, after, cfg, now=0.0), "a second plan right after is empty"


def test_renewal_happens_after_a_third_of_the_lifetime() -> None:
    cfg = Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=60)
    want = {"10.0.100.1": "lo"}
    assert plan(want, {"10.0.100.1": Present(45.0)}, cfg, now=0.0).renew == []
    assert plan(want, {"10.0.100.1": Present(39.0)}, cfg, now=0.0).renew == [("10.0.100.1", "lo")]
    assert plan(want, {"10.0.100.1": Present(None)}, cfg, now=0.0).renew == [("10.0.100.1", "lo")]
    permanent = Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=0)
    assert plan(want, {"10.0.100.1": Present(None)}, permanent, now=0.0).renew == []


def test_a_move_to_another_interface_removes_first_then_adds() -> None:
    p = plan({"10.0.100.1": "l3lbw3"}, {"10.0.100.1": Present(50.0, "l3lbw1")}, CFG, now=0.0)
    assert p.remove == [("10.0.100.1", "l3lbw1")] and p.add == [("10.0.100.1", "l3lbw3")] and not p.renew


def test_a_dual_stack_services_pods_count_once() -> None:
    """Each address family has its own EndpointSlices listing the same pods: counted once, not twice."""
    t = Tracker(CFG)
    t.set_node(parse_node(node_obj()))
    t.set_service(parse_service(svc_obj("web", ["10.0.100.5", "fd00:100::5"])))
    v4 = slice_obj("web-v4", "web", [("n1", True, False), ("n2", True, False)])
    v6 = {**slice_obj("web-v6", "web", [("n1", True, False), ("n2", True, False)]), "addressType": "IPv6"}
    t.set_slice(("default", "web-v4"), parse_slice(v4, "n1"))
    t.set_slice(("default", "web-v6"), parse_slice(v6, "n1"))
    t.update()
    assert t.counts[("default", "web")] == Counts(2, 1)
    assert t.weights == {"10.0.100.5": 1, "fd00:100::5": 1}
    t.delete_slice(("default", "web-v4"))
    t.update()
    assert t.counts[("default", "web")] == Counts(2, 1), "the other family still lists them"
