"""The other projects' annotations read as aliases of l3lb's own (l3lb/aliases.py), and a takeover: status
another controller wrote is kept and becomes ours. Unit cases per alias, then property tests over
arbitrary annotation values: never an exception, never an IP outside the pools."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from l3lb import aliases
from l3lb.aliases import ANNOTATION_CONFLICT, UNSUPPORTED, read
from l3lb.config import Config, parse_prefixes
from l3lb.ipam.allocator import Allocator
from l3lb.ipam.assign import INVALID_IPS, IP_IN_USE, IP_OUTSIDE_POOL, assign, compatible
from l3lb.ipam.pools import AddressPool, shorthand
from l3lb.metrics import Metrics
from l3lb.model import Service, WatchEvent, parse_service

V4 = parse_prefixes(["10.0.100.0/29", "fd00:100::/125"])
POOLS = shorthand(V4)
OURS = "l3lb/kube-system"


def reasons(r: aliases.Reading) -> list[str]:
    return [reason for reason, _ in r.notes]


# ---- requested IPs, one project at a time


def test_metallb_load_balancer_ips_stable_and_deprecated() -> None:
    r = read({"metallb.io/loadBalancerIPs": "10.0.100.1, fd00:100::1"}, {})
    assert r.requested == ("10.0.100.1", "fd00:100::1") and r.request_source == "metallb.io/loadBalancerIPs"
    r = read({"metallb.universe.tf/loadBalancerIPs": "10.0.100.2"}, {})
    assert r.requested == ("10.0.100.2",) and r.notes == ()
    # MetalLB reads metallb.io/ when it is there: so does l3lb, and says that the two disagree
    r = read(
        {"metallb.io/loadBalancerIPs": "10.0.100.1", "metallb.universe.tf/loadBalancerIPs": "10.0.100.2"}, {}
    )
    assert r.requested == ("10.0.100.1",)
    ((reason, message),) = r.notes
    assert reason == ANNOTATION_CONFLICT
    assert message == (
        "metallb.io/loadBalancerIPs='10.0.100.1' and metallb.universe.tf/loadBalancerIPs='10.0.100.2' "
        "disagree: l3lb reads metallb.io/loadBalancerIPs"
    )
    # one entry that is not an IP makes the whole request invalid, as in MetalLB
    r = read({"metallb.io/loadBalancerIPs": "10.0.100.1,nope"}, {})
    assert r.requested == () and "'nope' is not an IP address" in (r.request_error or "")


def test_cilium_ips_skip_what_is_not_an_ip_and_add_spec_load_balancer_ip() -> None:
    r = read({"lbipam.cilium.io/ips": "10.0.100.1 , nope"}, {"loadBalancerIP": "fd00:100::1"})
    assert r.requested == ("fd00:100::1", "10.0.100.1"), "spec first, then the annotation, as Cilium"
    assert r.request_error is None
    assert r.notes == (
        (UNSUPPORTED, "lbipam.cilium.io/ips: 'nope' is not an IP address; skipped, as Cilium does"),
    )
    assert read({"io.cilium/lb-ipam-ips": "10.0.100.3"}, {}).requested == ("10.0.100.3",)
    both = read({"lbipam.cilium.io/ips": "10.0.100.3", "io.cilium/lb-ipam-ips": "10.0.100.3"}, {})
    assert both.requested == ("10.0.100.3",) and both.notes == (), "agreeing aliases say nothing"


def test_kube_vip_hostnames_are_not_honoured_but_said() -> None:
    r = read({"kube-vip.io/loadbalancerIPs": "10.0.100.1,lb.example.com"}, {"loadBalancerIP": "10.0.100.1"})
    assert r.requested == ("10.0.100.1",) and r.request_error is None
    ((reason, message),) = r.notes  # spec.loadBalancerIP agrees (kube-vip-cloud-provider sets both)
    assert reason == UNSUPPORTED and "'lb.example.com'" in message and "DNS name" in message


def test_purelb_addresses_and_service_group() -> None:
    r = read({"purelb.io/addresses": "10.0.100.1,fd00:100::1", "purelb.io/service-group": "default"}, {})
    assert r.requested == ("10.0.100.1", "fd00:100::1")
    assert r.pool is None, "PureLB ignores service-group when addresses is set"
    assert read({"purelb.io/service-group": "routed"}, {}).pool == "routed"
    assert read({"purelb.io/addresses": "10.0.100.1, 10.0.100.2"}, {}).requested == (
        "10.0.100.1",
        "10.0.100.2",
    )
    assert read({"purelb.io/addresses": "10.0.100.300"}, {}).request_error


def test_spec_load_balancer_ip_alone_and_against_an_alias() -> None:
    assert read({}, {"loadBalancerIP": "10.0.100.6"}).requested == ("10.0.100.6",)
    r = read({"metallb.io/loadBalancerIPs": "10.0.100.1"}, {"loadBalancerIP": "10.0.100.6"})
    assert r.requested == ("10.0.100.1",)
    assert r.notes == (
        (
            ANNOTATION_CONFLICT,
            "metallb.io/loadBalancerIPs='10.0.100.1' and spec.loadBalancerIP='10.0.100.6' disagree: "
            "l3lb reads metallb.io/loadBalancerIPs",
        ),
    )
    # l3lb's own annotation, even empty, shadows the spec as before; empty aliases count as unset
    assert read({"l3lb.io/load-balancer-ips": ""}, {"loadBalancerIP": "10.0.100.6"}).requested == ()
    assert read({"metallb.io/loadBalancerIPs": " "}, {"loadBalancerIP": "10.0.100.6"}).requested == (
        "10.0.100.6",
    )


def test_l3lbs_own_annotation_wins_with_a_warning_naming_both() -> None:
    r = read(
        {
            "l3lb.io/load-balancer-ips": "10.0.100.1",
            "metallb.io/loadBalancerIPs": "10.0.100.2",
            "kube-vip.io/loadbalancerIPs": "10.0.100.1",
            "l3lb.io/allow-shared-ip": "a",
            "purelb.io/allow-shared-ip": "b",
            "l3lb.io/address-pool": "one",
            "metallb.io/address-pool": "two",
        },
        {},
    )
    assert (r.requested, r.sharing_key, r.pool) == (("10.0.100.1",), "a", "one")
    assert [m for _, m in r.notes] == [
        "l3lb.io/load-balancer-ips='10.0.100.1' and metallb.io/loadBalancerIPs='10.0.100.2' disagree: "
        "l3lb reads l3lb.io/load-balancer-ips (l3lb's own annotation wins)",
        "l3lb.io/allow-shared-ip='a' and purelb.io/allow-shared-ip='b' disagree: l3lb reads "
        "l3lb.io/allow-shared-ip (l3lb's own annotation wins)",
        "l3lb.io/address-pool='one' and metallb.io/address-pool='two' disagree: l3lb reads "
        "l3lb.io/address-pool (l3lb's own annotation wins)",
    ], "kube-vip's agrees with l3lb's own: nothing said"
    assert set(reasons(r)) == {ANNOTATION_CONFLICT}


def test_what_l3lb_does_not_do_is_a_warning() -> None:
    r = read({"kube-vip.io/ignore": "true", "purelb.io/multi-pool": "true"}, {})
    assert reasons(r) == [UNSUPPORTED, UNSUPPORTED]
    assert "loadBalancerClass" in r.notes[0][1] and "one IP per address family" in r.notes[1][1]
    r = read(
        {"lbipam.cilium.io/sharing-key": "k", "lbipam.cilium.io/sharing-permit-different-pods": "true"},
        {"externalTrafficPolicy": "Local"},
    )
    assert reasons(r) == [UNSUPPORTED] and "different selectors" in r.notes[0][1]


# ---- sharing


def svc(name: str, namespace: str = "web", **kw: Any) -> Service:
    base = {
        "key": (namespace, name),
        "uid": name,
        "is_load_balancer": True,
        "load_balancer_class": None,
        "local_policy": False,
        "ingress_ips": (),
        "requested_ips": (),
        "created": "2026-01-01T00:00:00Z",
        "families": ("IPv4",),
        "ports": (("TCP", 80),),
    }
    return Service(**{**base, **kw})


def parsed(name: str, namespace: str, annotations: dict[str, str], port: int = 80, **spec: Any) -> Service:
    return parse_service(
        {
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP"}], **spec},
        }
    )


def test_sharing_keys_of_every_project_share_alike() -> None:
    for key in (
        "metallb.io/allow-shared-ip",
        "metallb.universe.tf/allow-shared-ip",
        "purelb.io/allow-shared-ip",
    ):
        a, b = parsed("a", "web", {key: "k"}), parsed("b", "other", {key: "k"}, port=443)
        assert a.sharing_key == "k" and compatible(a, b), key


def test_cilium_sharing_keys_stay_in_their_namespace_unless_both_allow() -> None:
    key = "lbipam.cilium.io/sharing-key"
    cross = "lbipam.cilium.io/sharing-cross-namespace"
    a = parsed("a", "web", {key: "k"})
    assert compatible(a, parsed("b", "web", {key: "k"}, port=443)), "same namespace"
    assert not compatible(a, parsed("b", "other", {key: "k"}, port=443)), "Cilium's default: one namespace"
    a = parsed("a", "web", {key: "k", cross: "other,third"})
    assert not compatible(a, parsed("b", "other", {key: "k"}, port=443)), "both must allow"
    assert compatible(a, parsed("b", "other", {key: "k", cross: "web"}, port=443))
    assert compatible(a, parsed("b", "other", {"io.cilium/lb-ipam-sharing-key": "k", cross: "*"}, port=443))
    assert not compatible(a, parsed("b", "fourth", {key: "k", cross: "*"}, port=443)), "a does not list it"
    # an l3lb or MetalLB key shares across namespaces as before
    assert compatible(
        parsed("a", "web", {"l3lb.io/allow-shared-ip": "k"}),
        parsed("b", "x", {key: "k", cross: "*"}, port=443),
    )


def test_notes_are_warnings_of_the_allocator() -> None:
    s = parsed(
        "a",
        "web",
        {"kube-vip.io/loadbalancerIPs": "lb.example.com", "metallb.io/loadBalancerIPs": "10.0.100.2"},
    )
    r = assign([s], POOLS)
    assert r.ips[s.key] == ("10.0.100.2",)
    assert [c.reason for c in r.conflicts] == [ANNOTATION_CONFLICT], "the loser's hostname is not read at all"
    s = parsed("b", "web", {"metallb.io/loadBalancerIPs": "10.0.100.2,x"})
    r = assign([s], POOLS)
    assert r.ips[s.key] == () and [c.reason for c in r.conflicts] == [INVALID_IPS]


# ---- takeover: status another controller wrote


def test_status_another_controller_wrote_in_a_pool_is_kept_as_if_requested() -> None:
    theirs = svc("a", ingress_ips=("10.0.100.5",), status_managers=("controller",))
    outside = svc("b", ingress_ips=("192.0.2.7",), status_managers=("controller",))
    r = assign([theirs, outside], POOLS, OURS)
    assert r.ips[theirs.key] == ("10.0.100.5",)
    assert r.ips[outside.key] == ("10.0.100.1",), "outside every pool: handled as before"
    assert r.conflicts == []


def test_a_takeover_that_sharing_refuses_moves_with_a_warning() -> None:
    """PureLB lets a Local and a Cluster Service share an IP; l3lb does not: the younger moves, and says
    why, instead of silently."""
    old = svc("old", ingress_ips=("10.0.100.5",), status_managers=("allocator",), sharing_key="k")
    young = svc(
        "young",
        created="2026-01-02T00:00:00Z",
        ingress_ips=("10.0.100.5",),
        status_managers=("allocator",),
        sharing_key="k",
        local_policy=True,
        ports=(("TCP", 443),),
    )
    r = assign([old, young], POOLS, OURS)
    assert r.ips[old.key] == ("10.0.100.5",) and r.ips[young.key] == ("10.0.100.1",)
    ((c,),) = [[c for c in r.conflicts if c.key == young.key]]
    assert c.reason == IP_IN_USE
    assert c.message.startswith("10.0.100.5 in its status (written by allocator) is used by web/old (older)")
    assert c.message.endswith("it gets another IP")


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[str, tuple[str, ...], bool]] = []
        self.events: list[tuple[str, str]] = []

    def write(self, key, ips, resource_version="", take_over=False) -> None:  # type: ignore[no-untyped-def]
        self.writes.append((key[1], ips, take_over))

    def drop(self) -> None:
        pass

    def event(self, key, uid, kind, reason, message) -> None:  # type: ignore[no-untyped-def]
        self.events.append((reason, message))


def test_the_leader_takes_over_what_another_controller_wrote_once() -> None:
    writer = Recorder()
    allocator = Allocator(Config(prefixes=V4, node_name="n1"), writer, writer, Metrics())
    theirs = svc("a", ingress_ips=("10.0.100.5",), status_managers=("controller",))
    mine = svc("b", ingress_ips=("10.0.100.6",), status_managers=(OURS,))
    allocator.step([WatchEvent("services", "SET", (s.key, s), 0.0) for s in (theirs, mine)], leader=True)
    assert writer.writes == [("a", ("10.0.100.5",), True)], "ours already: nothing to write"
    assert writer.events == [
        ("TakenOver", "kept 10.0.100.5, which controller wrote in status; l3lb owns it now")
    ]
    landed = dataclasses.replace(theirs, status_managers=("controller", OURS))
    allocator.step([WatchEvent("services", "SET", (theirs.key, landed), 0.0)], leader=True)
    allocator.step([WatchEvent("services", "SET", (mine.key, mine), 0.0)], leader=True)
    assert len(writer.writes) == 1, "once it landed, nothing more"


# ---- properties

KEYS = [k for k, _ in aliases.IP_SOURCES] + list(aliases.SHARING_SOURCES) + list(aliases.POOL_SOURCES)
KEYS += [
    aliases.CILIUM_CROSS,
    aliases.CILIUM_DIFFERENT_PODS,
    aliases.KUBE_VIP_IGNORE,
    aliases.PURELB_MULTI_POOL,
]
ip_texts = st.sampled_from(
    [
        "10.0.100.1",
        "10.0.100.6",
        "10.0.100.7",
        "10.0.100.0",
        "fd00:100::3",
        "10.9.9.9",
        "2001:db8::1",
        "fe80::1%eth0",
        "::ffff:10.0.100.2",
        "lb.example.com",
        "",
        " ",
        "*",
        "true",
        "default",
        "nope",
        "10.0.100.300",
    ]
)
values = st.one_of(
    st.lists(ip_texts, max_size=4).map(",".join),
    st.lists(ip_texts, max_size=3).map(", ".join),
    st.text(max_size=20),
)
annotation_maps = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


@settings(max_examples=500, deadline=None)
@given(annotation_maps, st.one_of(st.none(), ip_texts, st.text(max_size=10)))
def test_any_annotation_values_are_read_without_an_exception(annotations: dict, spec_ip: str | None) -> None:
    r = read(annotations, {"loadBalancerIP": spec_ip} if spec_ip is not None else {})
    for ip in r.requested:
        assert str(ipaddress.ip_address(ip)) == ip and "%" not in ip
    assert (r.request_error is None) or r.requested == ()
    assert all(reason in (ANNOTATION_CONFLICT, UNSUPPORTED) for reason, _ in r.notes)


@st.composite
def services(draw: st.DrawFn) -> list[Service]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        annotations = draw(annotation_maps)
        status = draw(st.lists(ip_texts, max_size=2))
        obj = {
            "metadata": {
                "name": f"s{i}",
                "namespace": draw(st.sampled_from(["web", "other"])),
                "annotations": annotations,
                "creationTimestamp": f"2026-01-01T00:00:0{i}Z",
                "managedFields": [
                    {
                        "manager": draw(
                            st.sampled_from(["controller", "cilium-operator-lb-ipam", "allocator"])
                        ),
                        "subresource": "status",
                        "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}},
                    }
                ],
            },
            "spec": {
                "type": "LoadBalancer",
                "ports": [{"port": draw(st.sampled_from([80, 443])), "protocol": "TCP"}],
                "externalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"])),
                "ipFamilies": draw(st.sampled_from([["IPv4"], ["IPv6"], ["IPv4", "IPv6"]])),
                "ipFamilyPolicy": draw(
                    st.sampled_from(["SingleStack", "PreferDualStack", "RequireDualStack"])
                ),
            },
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in status]}},
        }
        out.append(parse_service(obj))
    return out


@settings(max_examples=300, deadline=None)
@given(services(), st.sampled_from([None, "default", "other"]))
def test_whatever_the_annotations_say_no_ip_outside_the_pools(batch: list[Service], name: str | None) -> None:
    pools: tuple[AddressPool, ...] = POOLS
    if name == "other":  # a second pool, as MetalLB's address-pool or PureLB's service-group may name
        pools = (*POOLS, AddressPool("other", parse_prefixes(["10.0.200.0/30"])))
    r = assign(batch, pools, OURS)
    held: dict[str, list[Service]] = {}
    for s in batch:
        got = r.ips[s.key]
        for ip in got:
            assert any(p.contains(ipaddress.ip_address(ip)) for p in pools), f"{ip} of {s.key} in no pool"
            held.setdefault(ip, []).append(s)
        families = ["IPv6" if ":" in ip else "IPv4" for ip in got]
        assert len(families) == len(set(families)), "at most one IP per family"
    for ip, hs in held.items():
        for i, a in enumerate(hs):
            for b in hs[i + 1 :]:
                assert compatible(a, b), f"{ip} held by {a.key} and {b.key}"
    assert all(c.reason != IP_OUTSIDE_POOL or "announced by no node" not in c.message for c in r.conflicts)


own_maps = st.dictionaries(
    st.sampled_from(["l3lb.io/load-balancer-ips", "l3lb.io/allow-shared-ip", "l3lb.io/address-pool"]),
    values,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(own_maps, st.one_of(st.none(), ip_texts))
def test_the_short_path_for_l3lbs_own_annotations_reads_as_the_long_one(annotations: dict, spec_ip) -> None:  # type: ignore[no-untyped-def]
    """With no other project's annotation, read() takes a shorter path (parsing is on the watch's hot
    path); an alias key that changes nothing (kube-vip.io/ignore: "false") forces the long one."""
    spec = {"loadBalancerIP": spec_ip} if spec_ip is not None else {}
    assert read(annotations, spec) == read({**annotations, "kube-vip.io/ignore": "false"}, spec)
