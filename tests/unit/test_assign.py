"""The allocator: unit cases and a property test over random histories of Services."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from l3lb.config import Config, parse_prefixes
from l3lb.ipam.allocator import Allocator, Assigned
from l3lb.ipam.assign import (
    INVALID_IPS,
    IP_IN_USE,
    IP_OUTSIDE_POOL,
    NO_POOL_FOR_FAMILY,
    POOL_EXHAUSTED,
    TWO_IPS_ONE_FAMILY,
    assign,
    compatible,
)
from l3lb.ipam.pools import shorthand as pools
from l3lb.k8s.writer import CONFLICT, FAILED, WRITTEN
from l3lb.metrics import Metrics
from l3lb.model import Service, WatchEvent

V4, V6 = parse_prefixes(["10.0.100.0/29"]), parse_prefixes(["10.0.100.0/29", "fd00:100::/125"])


def svc(
    name: str,
    created: str = "2026-01-01T00:00:00Z",
    *,
    requested: tuple[str, ...] = (),
    ingress=(),
    families=("IPv4",),
    policy: str = "SingleStack",
    share: str | None = None,
    ports=(("TCP", 80),),
    local: bool = False,
    selector=(("app", "x"),),
    error: str | None = None,
) -> Service:
    return Service(
        key=("ns", name),
        uid=name,
        is_load_balancer=True,
        load_balancer_class=None,
        local_policy=local,
        ingress_ips=tuple(ingress),
        requested_ips=requested,
        request_error=error,
        created=created,
        families=tuple(families),
        family_policy=policy,
        sharing_key=share,
        ports=tuple(sorted(set(ports))),
        selector=selector,
    )


def reasons(result) -> dict:  # type: ignore[no-untyped-def]
    return {c.key[1]: c.reason for c in result.conflicts}


def test_lowest_free_skipping_network_and_broadcast() -> None:
    r = assign([svc("a"), svc("b", "2026-01-02T00:00:00Z")], pools(V4))
    assert r.ips == {("ns", "a"): ("10.0.100.1",), ("ns", "b"): ("10.0.100.2",)}


def test_existing_status_is_kept_and_the_older_requester_wins() -> None:
    young = svc("young", "2026-01-02T00:00:00Z", ingress=("10.0.100.3",))
    old = svc("old", "2026-01-01T00:00:00Z", requested=("10.0.100.3",))
    r = assign([young, old], pools(V4))
    assert r.ips[("ns", "old")] == ("10.0.100.3",)
    assert r.ips[("ns", "young")] == ("10.0.100.1",), "reallocated, not a conflict: it requested nothing"
    younger_requester = svc("yr", "2026-01-03T00:00:00Z", requested=("10.0.100.3",))
    r = assign([old, younger_requester], pools(V4))
    assert r.ips[("ns", "yr")] == () and reasons(r) == {"yr": IP_IN_USE}


def test_bad_requests() -> None:
    r = assign(
        [
            svc("out", requested=("192.0.2.1",)),
            svc("bad", error="'x' is not an IP address"),
            svc("two", requested=("10.0.100.4", "10.0.100.5")),
        ],
        pools(V4),
    )
    assert reasons(r) == {"out": IP_OUTSIDE_POOL, "bad": INVALID_IPS, "two": TWO_IPS_ONE_FAMILY}
    assert r.ips[("ns", "two")] == ("10.0.100.4",)


def test_exhausted_pool_and_reserved_ranges() -> None:
    many = [svc(f"s{i}", f"2026-01-01T00:00:0{i}Z") for i in range(7)]
    r = assign(many, pools(V4, parse_prefixes(["10.0.100.2/31"])))
    assert [r.ips[s.key] for s in many[:4]] == [
        ("10.0.100.1",),
        ("10.0.100.4",),
        ("10.0.100.5",),
        ("10.0.100.6",),
    ]
    assert reasons(r) == {"s4": POOL_EXHAUSTED, "s5": POOL_EXHAUSTED, "s6": POOL_EXHAUSTED}


def test_families() -> None:
    r = assign(
        [
            svc("single6", families=("IPv6",)),
            svc("prefer", families=("IPv4",), policy="PreferDualStack"),
            svc("require", families=("IPv6", "IPv4"), policy="RequireDualStack"),
        ],
        pools(V6),
    )
    # same age: taken by name, so prefer, require, single6
    assert r.ips[("ns", "prefer")] == ("10.0.100.1", "fd00:100::1")
    assert r.ips[("ns", "require")] == ("10.0.100.2", "fd00:100::2")
    assert r.ips[("ns", "single6")] == ("fd00:100::3",)
    both = [svc("prefer", policy="PreferDualStack"), svc("require", policy="RequireDualStack")]
    r = assign(both, pools(V4))
    assert r.ips[("ns", "prefer")] == ("10.0.100.1",)
    assert reasons(r) == {"require": NO_POOL_FOR_FAMILY}
    assert r.ips[("ns", "require")] == ("10.0.100.2",), (
        "what can be had is given; the missing family is reported"
    )


def test_sharing_rules() -> None:
    a = svc("a", share="k", ports=(("TCP", 80),))
    assert compatible(a, svc("b", share="k", ports=(("TCP", 443),)))
    assert not compatible(a, svc("b", share="k", ports=(("TCP", 80),))), "overlapping port"
    assert not compatible(a, svc("b", share="other", ports=(("TCP", 443),))), "other key"
    assert not compatible(a, svc("b", ports=(("TCP", 443),))), "no key"
    assert not compatible(a, svc("b", share="k", ports=(("UDP", 53),), local=True)), "Cluster with Local"
    la = svc("la", share="k", local=True, selector=(("app", "x"),))
    assert compatible(la, svc("lb", share="k", ports=(("UDP", 53),), local=True, selector=(("app", "x"),)))
    assert not compatible(
        la, svc("lb", share="k", ports=(("UDP", 53),), local=True, selector=(("app", "y"),))
    )
    r = assign([a, svc("b", "2026-01-02T00:00:00Z", share="k", ports=(("UDP", 53),))], pools(V4))
    assert r.ips[("ns", "a")] == r.ips[("ns", "b")] == ("10.0.100.1",)


# ---- property: random histories never break the invariants
NAMES = [f"s{i}" for i in range(6)]
ip_choice = st.sampled_from(
    ["10.0.100.1", "10.0.100.2", "10.0.100.3", "10.0.100.9", "fd00:100::1", "fd00:100::7"]
)
step = st.one_of(
    st.tuples(
        st.just("create"),
        st.sampled_from(NAMES),
        st.sampled_from([None, "k", "j"]),
        st.sampled_from([80, 443, 53]),
        st.booleans(),
        st.sampled_from(["SingleStack", "PreferDualStack", "RequireDualStack"]),
    ),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("request"), st.sampled_from(NAMES), st.lists(ip_choice, max_size=2, unique=True)),
    st.tuples(st.just("class-change"), st.sampled_from(NAMES)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=30))
def test_random_histories_keep_the_invariants(steps: list) -> None:
    services: dict[str, Service] = {}
    clock = 0
    for s in steps:
        name = s[1]
        if s[0] == "create" and name not in services:
            clock += 1
            _, _, share, port, local, policy = s
            services[name] = svc(
                name,
                f"2026-01-01T00:00:{clock:02d}Z",
                share=share,
                ports=(("TCP", port),),
                local=local,
                policy=policy,
                families=("IPv4", "IPv6"),
            )
        elif s[0] == "request" and name in services:
            services[name] = dataclasses.replace(services[name], requested_ips=tuple(s[2]))
        elif s[0] in ("delete", "class-change"):  # a class change takes the Service out of our hands
            services.pop(name, None)
        result = assign(services.values(), pools(V6))
        # what the leader writes becomes the status the next round starts from
        services = {
            n: dataclasses.replace(v, ingress_ips=result.ips.get(v.key, ())) for n, v in services.items()
        }
        holders: dict[str, list[Service]] = {}
        for v in services.values():
            fams = [("IPv6" if ":" in ip else "IPv4") for ip in v.ingress_ips]
            assert len(fams) == len(set(fams)), "at most one IP per family"
            for ip in v.ingress_ips:
                assert any(ipaddress.ip_address(ip) in n for n in V6), "never outside the pools"
                holders.setdefault(ip, []).append(v)
        for ip, hs in holders.items():
            for i, a in enumerate(hs):
                for b in hs[i + 1 :]:
                    assert compatible(a, b), f"{ip} held by {a.key} and {b.key} without compatible sharing"
        again = assign(services.values(), pools(V6))
        assert again.ips == result.ips, "a settled allocation is a fixed point: no churn"


class FakeWriter:
    """Records what the allocator asks the writer for."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, tuple[str, ...], str]] = []
        self.warnings: list[str] = []
        self.take_overs: list[str] = []
        self.drops = 0

    def write(self, key, ips, resource_version="", take_over=False) -> None:  # type: ignore[no-untyped-def]
        self.writes.append((key[1], ips, resource_version))
        if take_over:
            self.take_overs.append(key[1])

    def drop(self) -> None:
        self.drops += 1

    def event(self, key, uid, kind, reason, message) -> None:  # type: ignore[no-untyped-def]
        if kind == "Warning":
            self.warnings.append(reason)


def sets(*services: Service) -> list[WatchEvent]:
    return [WatchEvent("services", "SET", (s.key, s), 0.0) for s in services]


def make_allocator(clock=lambda: 0.0) -> tuple[Allocator, FakeWriter]:  # type: ignore[no-untyped-def]
    writer = FakeWriter()
    return Allocator(Config(prefixes=V4, node_name="n1"), writer, writer, Metrics(), clock=clock), writer


def test_the_leader_counts_its_writes_in_flight_as_status() -> None:
    """A second run before the first writes are seen must not hand b's address to a (same second, first by
    name): allocations never move."""
    allocator, writer = make_allocator()
    b = svc("b", "2026-01-01T00:00:01Z")
    allocator.step(sets(b), leader=True)
    a = svc("a", "2026-01-01T00:00:01Z")
    allocator.step(sets(a), leader=True)
    assert [(n, ips) for n, ips, _ in writer.writes] == [("b", ("10.0.100.1",)), ("a", ("10.0.100.2",))]


def test_the_leader_yields_to_a_controller_that_keeps_rewriting_status() -> None:
    now = [0.0]
    allocator, writer = make_allocator(clock=lambda: now[0])
    s = svc("s")
    allocator.step(sets(s), leader=True)
    for _ in range(5):
        now[0] += 1
        s = dataclasses.replace(s, ingress_ips=("198.51.100.1",))  # the rival's write lands
        allocator.step(sets(s), leader=True)
    assert [ips for _, ips, _ in writer.writes] == [("10.0.100.1",)] * 3, "rewrote until the third fight"
    assert writer.warnings == ["StatusConflict"]
    now[0] += 601
    allocator.step(sets(s), leader=True)
    assert writer.writes[-1][1] == ("10.0.100.1",) and len(writer.writes) == 4, "tries again after 10 minutes"


def test_status_writes_are_conditional_on_the_version_decided_on() -> None:
    allocator, writer = make_allocator()
    allocator.step(sets(dataclasses.replace(svc("s"), resource_version="41")), leader=True)
    assert writer.writes == [("s", ("10.0.100.1",), "41")]


def test_only_a_leader_allocates_and_losing_leadership_drops_queued_writes() -> None:
    allocator, writer = make_allocator()
    allocator.step(sets(svc("a")), leader=False)
    assert writer.writes == []
    allocator.step([], leader=True)  # a new leader decides from the full state it already holds
    assert writer.writes == [("a", ("10.0.100.1",), "")]
    allocator.step(sets(svc("b")), leader=False)
    assert writer.drops == 1 and len(writer.writes) == 1, "nothing decided after the loss, the queue dropped"


def test_a_write_that_did_not_land_is_decided_again_after_a_backoff_or_a_newer_version() -> None:
    """A failed write is tried again after its own backoff (1 s at first); a conflict too, unless the
    watch shows the Service's newer version first, which is written at once."""
    now = [0.0]
    allocator, writer = make_allocator(clock=lambda: now[0])
    a = dataclasses.replace(svc("a"), resource_version="1")
    allocator.step(sets(a), leader=True)
    allocator.step([], leader=True, outcomes=[(a.key, FAILED, "1")])
    assert len(writer.writes) == 1, "not at once"
    now[0] += 1.0
    allocator.step([], leader=True)
    assert writer.writes[-1] == ("a", ("10.0.100.1",), "1") and len(writer.writes) == 2
    allocator.step([], leader=True, outcomes=[(a.key, CONFLICT, "1")])
    allocator.step(sets(dataclasses.replace(a, labels=(("x", "y"),))), leader=True)
    assert len(writer.writes) == 2, "the same version: no use writing again yet"
    allocator.step(sets(dataclasses.replace(a, resource_version="2")), leader=True)
    assert writer.writes[-1] == ("a", ("10.0.100.1",), "2"), "a newer version: written at once"
    allocator.step([], leader=True, outcomes=[(a.key, WRITTEN, "2"), (a.key, FAILED, "2")])
    now[0] += 1.0
    allocator.step([], leader=True)
    assert len(writer.writes) == 4, "a write that landed starts the backoff over"


def test_status_we_wrote_on_a_service_no_longer_ours_is_cleared_from_full_state() -> None:
    """The agents' class settings changed: a class-less Service is not ours any more. A new leader that
    never saw it change still clears what its group wrote (managedFields) in its prefixes, and nothing that
    another controller or another group of l3lb agents wrote."""
    allocator, writer = make_allocator()
    allocator.config = Config(prefixes=V4, node_name="n1", default_class=False)
    ours = ("l3lb/kube-system",)
    mine = dataclasses.replace(
        svc("mine", ingress=("10.0.100.3",)), status_managers=ours, resource_version="7"
    )
    theirs = dataclasses.replace(svc("theirs", ingress=("10.0.100.4",)), resource_version="8")
    # another group of l3lb agents (its own Lease) wrote these, even one inside our prefix: not ours to clear
    group = ("l3lb/other-lease-namespace",)
    other_group = dataclasses.replace(svc("other", ingress=("10.0.100.5",)), status_managers=group)
    outside = dataclasses.replace(svc("outside", ingress=("10.200.0.1",)), status_managers=ours)
    everything = [(s.key, s) for s in (mine, theirs, other_group, outside)]
    allocator.step([WatchEvent("services", "REPLACE", everything, 0.0)], leader=True)
    assert writer.writes == [("mine", (), "7")]


def test_a_new_version_that_changes_nothing_decided_runs_nothing() -> None:
    """A Service whose new version differs only in what the allocator does not decide from (its
    resourceVersion, its conditions: what the leader's own condition writes change) costs no run over the
    full state; a value that changed does. But a write that met a conflict is made again at once at the
    newer version, whatever changed in it."""
    allocator, writer = make_allocator()
    a = dataclasses.replace(svc("a"), resource_version="1")
    allocator.step(sets(a), leader=True)
    assert writer.writes == [("a", ("10.0.100.1",), "1")]
    allocator.step([], leader=True, outcomes=[(a.key, CONFLICT, "1")])
    assert len(writer.writes) == 1, "the same version: waits for a newer one"
    allocator.step(sets(dataclasses.replace(a, resource_version="2")), leader=True)
    assert writer.writes[-1] == ("a", ("10.0.100.1",), "2"), "a newer version: written at once"
    allocator.step([], leader=True, outcomes=[(a.key, WRITTEN, "2")])
    landed = dataclasses.replace(
        a, ingress_ips=("10.0.100.1",), resource_version="3", status_managers=("l3lb/kube-system",)
    )
    allocator.step(sets(landed), leader=True)
    runs = allocator.runs
    allocator.step(sets(dataclasses.replace(landed, resource_version="4")), leader=True)
    assert allocator.runs == runs, "nothing it decides from changed"
    allocator.step(sets(dataclasses.replace(landed, resource_version="5", labels=(("x", "y"),))), leader=True)
    assert allocator.runs == runs + 1
    assert len(writer.writes) == 2


def test_the_leader_hands_each_service_and_its_decision_to_the_conditions_as_it_changes() -> None:
    """Everything when a term starts; then only the Services whose object or decision changed, a new
    version alone included (the conditions are written conditional on it), without a run for that."""
    allocator, _ = make_allocator()
    handed: list[tuple[dict, bool]] = []
    allocator.on_assigned = lambda changes, everything: handed.append((dict(changes), everything))
    a = dataclasses.replace(svc("a"), resource_version="1")
    other = dataclasses.replace(svc("b"), load_balancer_class="someone-else")
    allocator.step(sets(a, other), leader=False)
    assert handed == [], "not while it does not lead"
    allocator.step([], leader=True)
    ((changes, everything),) = handed
    assert everything and changes[a.key].ours and changes[a.key].ips == ("10.0.100.1",)
    assert not changes[other.key].ours
    newer = dataclasses.replace(a, resource_version="2")
    runs = allocator.runs
    allocator.step(sets(newer), leader=True)
    assert allocator.runs == runs and handed[-1] == (
        {a.key: Assigned(newer, True, ("10.0.100.1",), writing=True)},
        False,
    )
    allocator.step(sets(dataclasses.replace(newer, request_error="bad")), leader=True)
    (got,) = handed[-1][0].values()
    assert got.ips == () and got.conflicts[0][0] == INVALID_IPS
    allocator.step([WatchEvent("services", "DELETE", (a.key, a), 0.0)], leader=True)
    assert handed[-1] == ({a.key: None}, False)
