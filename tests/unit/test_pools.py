"""Named pools: the config file, and which pool each Service's addresses come from."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from l3lb.config import Config
from l3lb.ipam.assign import IP_OUTSIDE_POOL, NO_POOL_ALLOWED, POOL_NOT_ALLOWED, UNKNOWN_POOL, assign
from l3lb.ipam.pools import AddressPool, ConfigError, fingerprint, load, parse
from l3lb.model import Node, Service, SliceSummary, parse_service
from l3lb.node.decide import NODE_NOT_SELECTED
from l3lb.node.tracker import Tracker

MANAGER = "l3lb/kube-system"

TWO_POOLS = """
pools:
  - name: internet
    prefixes: [203.0.113.0/29, "2001:db8:100::/125"]
    reserved: [203.0.113.4/30]
    autoAssign: false
    namespaces: [web]
    nodeSelector:
      matchLabels: {edge: "true"}
  - name: internal
    prefixes: [10.0.100.0/29]
    serviceSelector:
      matchExpressions:
        - {key: exposure, operator: NotIn, values: [internet]}
  - name: lab
    prefixes: [10.0.200.0/29]
"""


POOLS = parse(yaml.safe_load(TWO_POOLS))


@pytest.fixture()
def pools() -> tuple[AddressPool, ...]:
    return POOLS


def svc(
    name: str,
    ns: str = "web",
    *,
    pool: str | None = None,
    requested: tuple[str, ...] = (),
    ingress: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    families: tuple[str, ...] = ("IPv4",),
    policy: str = "SingleStack",
    created: str = "2026-01-01T00:00:00Z",
    managers: tuple[str, ...] = (),
) -> Service:
    return Service(
        key=(ns, name),
        uid=name,
        is_load_balancer=True,
        load_balancer_class=None,
        local_policy=False,
        ingress_ips=ingress,
        requested_ips=requested,
        created=created,
        families=families,
        family_policy=policy,
        pool=pool,
        labels=tuple(sorted((labels or {}).items())),
        status_managers=managers,
    )


def conflicts(result) -> dict:  # type: ignore[no-untyped-def]
    return {c.key[1]: (c.reason, c.message) for c in result.conflicts}


# ---- the file


def test_the_file_in_yaml_and_json_gives_the_same_pools(
    tmp_path: Path, pools: tuple[AddressPool, ...]
) -> None:
    (tmp_path / "c.yaml").write_text(TWO_POOLS)
    (tmp_path / "c.json").write_text(json.dumps(yaml.safe_load(TWO_POOLS)))
    assert load(tmp_path / "c.yaml") == load(tmp_path / "c.json") == pools
    internet, internal, _ = pools
    assert internet.auto_assign is False and internet.namespaces == {"web"}
    assert [str(n) for n in internet.prefixes] == ["203.0.113.0/29", "2001:db8:100::/125"]
    assert internet.node_selector.matches({"edge": "true"}) and not internet.node_selector.matches({})
    assert not internal.service_selector.matches({"exposure": "internet"})
    assert internal.service_selector.matches({})


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({}, "pools: a non-empty list"),
        ({"pool": []}, "unknown field 'pool'"),
        ({"pools": [{"name": "a", "prefixes": ["10.0.0.0/24"], "autoassign": True}]}, "pools[0].autoassign"),
        (
            {"pools": [{"name": "a", "prefixes": ["10.0.0.1/24"]}]},
            "pools[0].prefixes[0]: 10.0.0.1/24 has host",
        ),
        ({"pools": [{"name": "a b", "prefixes": ["10.0.0.0/24"]}]}, "pools[0].name"),
        ({"pools": [{"name": "a", "prefixes": []}]}, "pools[0].prefixes: a list of CIDRs, not empty"),
        (
            {
                "pools": [
                    {"name": "a", "prefixes": ["10.0.0.0/24"]},
                    {"name": "a", "prefixes": ["10.1.0.0/24"]},
                ]
            },
            "pools[1].name: 'a' is also the name of pools[0]",
        ),
        (
            {
                "pools": [
                    {"name": "a", "prefixes": ["10.0.0.0/24"]},
                    {"name": "b", "prefixes": ["10.0.0.128/25"]},
                ]
            },
            "pools[1].prefixes[0]: 10.0.0.128/25 overlaps 10.0.0.0/24 of pool a",
        ),
        (
            {"pools": [{"name": "a", "prefixes": ["10.0.0.0/24"], "reserved": ["10.9.0.0/30"]}]},
            "pools[0].reserved[0]: 10.9.0.0/30 is inside none",
        ),
        (
            {"pools": [{"name": "a", "prefixes": ["10.0.0.0/24"], "autoAssign": "no"}]},
            "pools[0].autoAssign: true or false",
        ),
        (
            {
                "pools": [
                    {"name": "a", "prefixes": ["10.0.0.0/24"], "nodeSelector": {"matchLabels": {"x": True}}}
                ]
            },
            "pools[0].nodeSelector.matchLabels.x: label values are strings",
        ),
        (
            {
                "pools": [
                    {
                        "name": "a",
                        "prefixes": ["10.0.0.0/24"],
                        "serviceSelector": {"matchExpressions": [{"key": "k", "operator": "Has"}]},
                    }
                ]
            },
            "pools[0].serviceSelector.matchExpressions[0].operator: 'Has' is not one of",
        ),
        (
            {
                "pools": [
                    {
                        "name": "a",
                        "prefixes": ["10.0.0.0/24"],
                        "serviceSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]},
                    }
                ]
            },
            "pools[0].serviceSelector.matchExpressions[0].values: required for In",
        ),
    ],
)
def test_errors_name_the_field(doc: object, error: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(doc)
    assert error in str(err.value)


def test_a_file_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("pools: [\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not YAML or JSON"):
        load(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"missing\.yaml: No such file"):
        load(tmp_path / "missing.yaml")


def test_the_config_takes_its_prefixes_from_the_pools(pools: tuple[AddressPool, ...]) -> None:
    config = Config(prefixes=(), node_name="n", pools=pools)
    assert config.in_prefix("10.0.200.3") and config.in_prefix("2001:db8:100::1")
    assert not config.in_prefix("10.0.201.1")
    assert config.pool_of("203.0.113.2").name == "internet"
    assert [str(r) for r in config.reserved] == ["203.0.113.4/30"]


def test_the_annotation_and_labels_are_parsed() -> None:
    s = parse_service(
        {
            "metadata": {
                "namespace": "web",
                "name": "a",
                "labels": {"exposure": "internet"},
                "annotations": {"l3lb.io/address-pool": "internet"},
            },
            "spec": {"type": "LoadBalancer"},
        }
    )
    assert s.pool == "internet" and s.labels == (("exposure", "internet"),)


# ---- allocation


def test_first_auto_assign_pool_that_allows_the_service(pools: tuple[AddressPool, ...]) -> None:
    r = assign(
        [svc("plain"), svc("exposed", labels={"exposure": "internet"}), svc("named", pool="internet")], pools
    )
    assert r.ips[("web", "plain")] == ("10.0.100.1",), "internet is not auto-assign: internal is first"
    assert r.ips[("web", "exposed")] == ("10.0.200.1",), "internal's selector refuses it: lab"
    assert r.ips[("web", "named")] == ("203.0.113.1",)
    assert r.conflicts == []


def test_namespaces_and_no_pool_allowed(pools: tuple[AddressPool, ...]) -> None:
    only_internet = (pools[0], dataclasses.replace(pools[1], namespaces=frozenset({"web"})))
    r = assign([svc("a", "other", pool="internet"), svc("b", "other")], only_internet)
    got = conflicts(r)
    assert r.ips[("other", "a")] == () and got["a"] == (
        POOL_NOT_ALLOWED,
        "l3lb.io/address-pool names pool internet, but pool internet allows namespaces web, not other",
    )
    assert r.ips[("other", "b")] == () and got["b"][0] == NO_POOL_ALLOWED
    assert "pool internal allows namespaces web, not other" in got["b"][1]
    assert "pool internet allows namespaces web, not other" in got["b"][1]


def test_requests_follow_the_pool_rules(pools: tuple[AddressPool, ...]) -> None:
    r = assign(
        [
            svc("in-non-auto", requested=("203.0.113.2",)),  # no annotation needed to ask for an IP in it
            svc("wrong-ns", "other", requested=("203.0.113.3",)),
            svc("named-other", pool="lab", requested=("10.0.100.5",)),
        ],
        pools,
    )
    got = conflicts(r)
    assert r.ips[("web", "in-non-auto")] == ("203.0.113.2",) and "in-non-auto" not in got
    assert r.ips[("other", "wrong-ns")] == () and got["wrong-ns"][0] == POOL_NOT_ALLOWED
    assert r.ips[("web", "named-other")] == () and got["named-other"] == (
        IP_OUTSIDE_POOL,
        "10.0.100.5 is in pool internal, not in pool lab that l3lb.io/address-pool names",
    )


def test_a_granted_request_needs_no_auto_assign_pool(pools: tuple[AddressPool, ...]) -> None:
    exposed = svc("exposed", labels={"exposure": "internet"}, requested=("203.0.113.2",))
    r = assign([exposed], pools[:2])  # internet is not auto-assign, internal refuses the label
    assert r.ips[("web", "exposed")] == ("203.0.113.2",) and r.conflicts == []


def test_reserved_ranges_of_a_pool(pools: tuple[AddressPool, ...]) -> None:
    many = [svc(f"s{i}", pool="internet", created=f"2026-01-01T00:00:0{i}Z") for i in range(4)]
    r = assign(many, pools)
    assert [r.ips[s.key] for s in many] == [("203.0.113.1",), ("203.0.113.2",), ("203.0.113.3",), ()]


def test_dual_stack_from_the_named_pool(pools: tuple[AddressPool, ...]) -> None:
    r = assign([svc("ds", pool="internet", families=("IPv4", "IPv6"), policy="RequireDualStack")], pools)
    assert r.ips[("web", "ds")] == ("203.0.113.1", "2001:db8:100::1")


def test_naming_another_pool_moves_the_service(pools: tuple[AddressPool, ...]) -> None:
    r = assign([svc("a", pool="lab", ingress=("10.0.100.1",))], pools)
    assert r.ips[("web", "a")] == ("10.0.200.1",) and r.conflicts == []


def test_a_configuration_change_never_takes_an_ip_away(pools: tuple[AddressPool, ...]) -> None:
    """A removed or renamed pool, or a pool that stops allowing a Service: the Service keeps its IPs, with
    a warning that says what to do."""
    internet, internal, lab = pools
    held = [
        svc("gone", ingress=("10.9.0.1",), managers=(MANAGER,)),
        svc("renamed", pool="internet", ingress=("203.0.113.1",)),
        svc("restricted", "other", ingress=("10.0.100.1",)),
        svc("asked", requested=("10.9.0.2",), ingress=("10.9.0.2",), managers=(MANAGER,)),
    ]
    after = (
        dataclasses.replace(internet, name="public"),
        dataclasses.replace(internal, namespaces=frozenset({"web"})),
        lab,
    )
    r = assign(held, after, MANAGER)
    assert r.ips == {
        ("web", "gone"): ("10.9.0.1",),
        ("web", "renamed"): ("203.0.113.1",),
        ("other", "restricted"): ("10.0.100.1",),
        ("web", "asked"): ("10.9.0.2",),
    }
    got = conflicts(r)
    assert got["gone"][0] == IP_OUTSIDE_POOL and "announced by no node" in got["gone"][1]
    assert got["asked"][0] == IP_OUTSIDE_POOL and "announced by no node" in got["asked"][1]
    assert got["renamed"][0] == UNKNOWN_POOL and "keeps the IPs it has" in got["renamed"][1]
    assert got["restricted"][0] == POOL_NOT_ALLOWED and "to move it, name a pool" in got["restricted"][1]


def test_status_another_controller_wrote_outside_the_pools_is_replaced(
    pools: tuple[AddressPool, ...],
) -> None:
    """k3s ServiceLB writes node IPs; those are not ours to keep."""
    r = assign([svc("a", ingress=("192.168.1.10",), managers=("k3s",))], pools, MANAGER)
    assert r.ips[("web", "a")] == ("10.0.100.1",)


names = st.sampled_from(["a", "b", "c", "d", "e", "f"])
namespaces = st.sampled_from(["web", "other"])


@st.composite
def services(draw: st.DrawFn) -> list[Service]:
    out = []
    for i, name in enumerate(draw(st.lists(names, unique=True, max_size=6))):
        out.append(
            svc(
                name,
                draw(namespaces),
                pool=draw(st.sampled_from([None, None, "internet", "internal", "lab", "nope"])),
                labels=draw(st.sampled_from([{}, {"exposure": "internet"}])),
                families=draw(st.sampled_from([("IPv4",), ("IPv6",), ("IPv4", "IPv6")])),
                policy=draw(st.sampled_from(["SingleStack", "PreferDualStack", "RequireDualStack"])),
                created=f"2026-01-01T00:00:0{i}Z",
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(services())
def test_new_addresses_only_from_a_pool_the_service_may_use(batch: list[Service]) -> None:
    pools = POOLS
    by_name = {p.name: p for p in pools}
    r = assign(batch, pools, MANAGER)
    taken: dict[str, tuple[str, str]] = {}
    for s in batch:
        for ip in r.ips[s.key]:
            assert ip not in taken, f"{ip} given to {s.key} and {taken[ip]}"
            taken[ip] = s.key
            pool = next(p for p in pools if p.contains(ipaddress.ip_address(ip)))
            if s.pool:
                assert pool is by_name[s.pool]
            else:
                assert pool.auto_assign and pool.refuses(s.key[0], dict(s.labels)) is None
            assert not any(ipaddress.ip_address(ip) in net for net in pool.reserved)


# ---- which nodes announce


def node(labels: dict[str, str]) -> Node:
    return Node("n1", labels=tuple(sorted(labels.items())))


def test_only_nodes_the_pool_selects_announce_its_ips() -> None:
    tracker = Tracker(Config(prefixes=(), node_name="n1", pools=POOLS))
    both = dataclasses.replace(svc("a"), ingress_ips=("203.0.113.1", "10.0.200.1"))
    edge_only = dataclasses.replace(svc("b"), ingress_ips=("203.0.113.2",))
    for s in (both, edge_only):
        tracker.set_service(s)
        tracker.set_slice(("web", f"{s.key[1]}-1"), SliceSummary(s.key, 1, 1))
    tracker.set_node(node({}))
    tracker.update()
    assert tracker.announced == {"10.0.200.1"}
    why = tracker.explain("203.0.113.1")
    assert why is not None and why.reason == NODE_NOT_SELECTED
    assert why.detail == "this node does not match the node selector of pool internet (edge in (true))"
    assert tracker.decisions[("web", "b")].reason == NODE_NOT_SELECTED
    tracker.set_node(node({"edge": "true"}))
    assert tracker.update() >= {"203.0.113.1", "203.0.113.2"}
    assert tracker.announced == {"203.0.113.1", "203.0.113.2", "10.0.200.1"}
    tracker.set_node(node({"edge": "true", "other": "x"}))
    assert not tracker.pending, "a label no pool selects on changes nothing"
    tracker.set_node(node({}))
    tracker.update()
    assert tracker.announced == {"10.0.200.1"}


def test_the_fingerprint_follows_what_allocation_and_announcing_depend_on() -> None:
    same = parse(yaml.safe_load(TWO_POOLS))
    assert fingerprint(same) == fingerprint(POOLS)
    moved = (dataclasses.replace(POOLS[0], auto_assign=True), *POOLS[1:])
    other_nodes = (dataclasses.replace(POOLS[0], node_selector=POOLS[1].service_selector), *POOLS[1:])
    reordered = (POOLS[1], POOLS[0], POOLS[2])
    prints = {fingerprint(p) for p in (POOLS, moved, other_nodes, reordered)}
    assert len(prints) == 4, "auto-assign, a selector and the order each change it"
