"""Per-pool BGP attributes on the real FRR of the lab: the nodes run the FRR config the NixOS module
generates for four pools, and the router sees each pool's routes with that pool's own communities, large
communities and AS-path prepend (IPv4 and IPv6, on lo and on weight-class interfaces), the routes of the
pool without attributes without any, and none of the pool tagged no-export."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr]

POOLS = [
    {
        "name": "edge",
        "prefixes": ["10.0.100.0/26", "fd00:100::/120"],
        "bgp": {
            "communities": ["65000:100", "65000:200"],
            "largeCommunities": ["65000:1:100"],
            "asPathPrepend": [64999, 64999],
        },
    },
    {"name": "internal", "prefixes": ["10.0.100.64/26", "fd00:100::100/120"]},
    {
        "name": "core",
        "prefixes": ["10.0.100.128/26", "fd00:100::200/120"],
        "bgp": {"communities": ["65000:300"], "largeCommunities": ["65000:3:300"]},
    },
    # What the module refuses: set when redistributing, no-export keeps the node itself from advertising
    # the route to its eBGP peers.
    {"name": "blocked", "prefixes": ["10.0.100.192/26"], "bgp": {"communities": ["no-export"]}},
]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # Its own control plane, as test_weighted's: the session's holds the FRR lab's Nodes of the same names.
    with Lab(2, weight_classes=2, agents=False, frr_pools=POOLS, log=lambda _: None) as lab:
        lab.class_interfaces_by_hand()
        yield lab


def route(lab: Lab, ip: str) -> list[dict]:
    """The router's BGP paths to ``ip``, once both nodes' paths are there."""
    family = "ipv6" if ":" in ip else "ipv4"
    host = f"{ip}/{128 if ':' in ip else 32}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        paths = lab.router_frr.vtysh_json(f"show bgp {family} unicast {host} json").get("paths", [])
        if len(paths) == 2:
            return paths
        time.sleep(0.2)
    raise AssertionError(f"the router has {len(paths)} paths to {host}")


EDGE = ("65000:100 65000:200", "65000:1:100", "64999 64999")
CORE = ("65000:300", "65000:3:300", None)


@pytest.mark.parametrize(
    ("ip", "dev", "want"),
    [
        ("10.0.100.5", "lo", EDGE),
        ("10.0.100.6", "l3lbw2", EDGE),
        ("fd00:100::5", "lo", EDGE),
        ("fd00:100::6", "l3lbw2", EDGE),
        ("10.0.100.130", "lo", CORE),
        ("fd00:100::205", "l3lbw1", CORE),
    ],
)
def test_each_pool_with_its_attributes(
    lab: Lab, ip: str, dev: str, want: tuple[str, str, str | None]
) -> None:
    communities, large, prepend = want
    length = 128 if ":" in ip else 32
    for node in lab.nodes:
        node.ns.run(["ip", "addr", "add", f"{ip}/{length}", "dev", dev])
    try:
        for path in route(lab, ip):
            assert path["community"]["string"] == communities, path
            assert path["largeCommunity"]["string"] == large, path
            if prepend:
                assert path["aspath"]["string"].endswith(prepend), path
            else:
                assert "64999" not in path["aspath"]["string"], path
            if dev != "lo":
                assert "LB:" in path["extendedCommunity"]["string"], "the class entry ran after the pool's"
    finally:
        for node in lab.nodes:
            node.ns.run(["ip", "addr", "del", f"{ip}/{length}", "dev", dev], check=False)


@pytest.mark.parametrize("ip", ["10.0.100.70", "fd00:100::170"])
def test_the_pool_without_attributes(lab: Lab, ip: str) -> None:
    length = 128 if ":" in ip else 32
    for node in lab.nodes:
        node.ns.run(["ip", "addr", "add", f"{ip}/{length}", "dev", "lo"])
    try:
        for path in route(lab, ip):
            assert "community" not in path and "largeCommunity" not in path, path
            assert "64999" not in path["aspath"]["string"], path
    finally:
        for node in lab.nodes:
            node.ns.run(["ip", "addr", "del", f"{ip}/{length}", "dev", "lo"], check=False)


def test_no_export_set_on_the_node_stops_its_own_advertisement(lab: Lab) -> None:
    """Why the module refuses no-export, no-advertise and local-AS in a pool's communities."""
    node = lab.nodes[0]
    node.ns.run(["ip", "addr", "add", "10.0.100.200/32", "dev", "lo"])
    try:
        deadline = time.monotonic() + 10
        local: list[dict] = []
        while not local and time.monotonic() < deadline:
            local = node.frr.vtysh_json("show bgp ipv4 unicast 10.0.100.200/32 json").get("paths", [])
            time.sleep(0.2)
        assert local and local[0]["community"]["string"] == "no-export", local
        time.sleep(2)  # the other pools' routes reach the router within a second (above)
        assert lab.router_frr.vtysh_json("show bgp ipv4 unicast 10.0.100.200/32 json").get("paths", []) == []
    finally:
        node.ns.run(["ip", "addr", "del", "10.0.100.200/32", "dev", "lo"], check=False)
