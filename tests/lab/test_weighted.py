"""Weighted anycast on real FRR: two nodes run the agent with --weighted and FRR with the module's class
entries; the router installs next hops weighted by the nodes' local ready endpoints, and client flows
split in proportion. A change of class moves the address without a withdraw at the router."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest
from lab import NAMESPACE, VIP, VIP6, Lab

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2, address_lifetime=10, weight_classes=4, log=lambda _: None) as lab:
        lab.create_service()
        yield lab


def test_weights_follow_local_ready_endpoints_and_flows_split_in_proportion(lab: Lab) -> None:
    start = time.monotonic()
    lab.ready_pods("node1", 1)
    lab.ready_pods("node2", 3)
    lab.routes.wait_weights(VIP, {"node1": 25, "node2": 75}, start)
    lab.routes.wait_weights(VIP6, {"node1": 25, "node2": 75}, start)
    assert lab.held("node1") == {"l3lbw1"} and lab.held("node2") == {"l3lbw3"}
    for ip in (VIP, VIP6):
        served = lab.curl(ip, flows=200)
        assert sum(served.values()) == 200, served
        assert 0.65 <= served["node2"] / 200 <= 0.85, f"1:3 weights should give about 150 of 200: {served}"


def test_a_change_of_class_never_withdraws_at_the_router(lab: Lab) -> None:
    lab.ready_pods("node1", 1)
    lab.ready_pods("node2", 3)
    lab.routes.wait_weights(VIP, {"node1": 25, "node2": 75}, time.monotonic() - 60)
    time.sleep(6)  # past the agents' hold-down after their last move
    start = time.monotonic()
    lab.ready_pods("node1", 2)
    lab.ready_pods("node2", 2)
    t = lab.routes.wait_weights(VIP, {"node1": 50, "node2": 50}, start)
    assert t - start < 5, f"new weights after {t - start:.2f} s"
    seen = [nodes for at, ip, nodes in lab.routes.changes if ip == VIP and at >= start]
    assert all(nodes == {"node1", "node2"} for nodes in seen), f"a next hop went away meanwhile: {seen}"
    assert lab.held("node1") == {"l3lbw2"} and lab.held("node2") == {"l3lbw2"}


def test_withdraw_and_repair_with_weights(lab: Lab) -> None:
    lab.ready_pods("node1", 2)
    lab.ready_pods("node2", 2)
    lab.routes.wait_weights(VIP, {"node1": 50, "node2": 50}, time.monotonic() - 60)
    start = time.monotonic()
    lab.ready_pods("node1", 0)
    lab.routes.wait_for(VIP, {"node2"}, start)
    assert lab.held("node1") == set()
    start = time.monotonic()
    lab.node("node2").ns.run(["ip", "addr", "del", f"{VIP}/32", "dev", "l3lbw2"])
    lab.routes.wait_for(VIP, {"node2"}, start)
    deadline = time.monotonic() + 2
    while lab.held("node2") != {"l3lbw2"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.held("node2") == {"l3lbw2"}, "restored on its class interface"
    assert "restoring" in lab.node("node2").agent_log()


def test_status_and_check_see_the_weights(lab: Lab) -> None:
    lab.ready_pods("node1", 1)
    lab.ready_pods("node2", 3)
    lab.routes.wait_weights(VIP, {"node1": 25, "node2": 75}, time.monotonic() - 60)
    out = lab.l3lb("node2", "status", "--weighted", "-o", "json", check=True)
    (row,) = [r for r in json.loads(out.stdout)["services"] if r["service"] == f"{NAMESPACE}/echo"]
    assert row["weight_class"] == "l3lbw3" and row["local_ready"] == 3
    assert row["on_interface"] == [f"{VIP}@l3lbw3", f"{VIP6}@l3lbw3"]
    assert "WEIGHT CLASS" in lab.l3lb("node2", "status", "--weighted", check=True).stdout
    results = json.loads(lab.l3lb("node2", "check", "--weighted", "-o", "json").stdout)
    frr = [r for r in results if r["check"] == "frr"]
    assert frr and all(r["status"] == "ok" for r in frr), frr
    out = lab.l3lb("node2", "check", "--weighted", "--weight-classes", "5", "-o", "json").stdout
    failing = [r for r in json.loads(out) if r["check"] == "frr" and r["status"] == "fail"]
    assert any("l3lbw5" in r["message"] for r in failing), failing
    metrics = lab.metrics("node2")
    assert metrics[f'l3lb_address_weight{{ip="{VIP}"}}'] == 3


def test_the_class_interfaces_are_owned_as_lo_is(lab: Lab) -> None:
    """Strays and second copies on the class interfaces are collected, what is outside the prefixes (or not
    host-length) is left alone, and SIGTERM withdraws from every class interface."""
    lab.ready_pods("node1", 1)
    lab.ready_pods("node2", 3)
    lab.routes.wait_weights(VIP, {"node1": 25, "node2": 75}, time.monotonic() - 60)
    node = lab.node("node2")
    hand = node.ns.run
    others = [("192.0.2.77/32", "l3lbw4"), ("10.0.100.128/25", "l3lbw4"), ("fd00:100::80/120", "l3lbw1")]
    for net, dev in others:
        hand(["ip", "addr", "add", net, "dev", dev])
    hand(["ip", "addr", "add", "10.0.100.99/32", "dev", "l3lbw4"])  # in the prefix, wanted by nobody
    hand(["ip", "addr", "add", f"{VIP}/32", "dev", "l3lbw2"])  # a second copy of ours
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        lab.held("node2", "10.0.100.99") or lab.held("node2") != {"l3lbw3"}
    ):
        time.sleep(0.05)
    assert lab.held("node2", "10.0.100.99") == set() and lab.held("node2") == {"l3lbw3"}
    assert "collecting stray" in node.agent_log()
    start = time.monotonic()
    lab.signal_agent("node2", signal.SIGTERM)
    lab.routes.wait_for(VIP, {"node1"}, start)
    assert lab.held("node2") == set() and lab.held("node2", VIP6) == set(), "withdrawn from every interface"
    kept = {(a["local"], a["prefixlen"]) for dev in ("l3lbw1", "l3lbw4") for a in node.ns.addresses(dev)}
    for net, dev in others:
        addr, length = net.split("/")
        assert (addr, int(length)) in kept, f"{net} on {dev} is not ours and must stay"
        hand(["ip", "addr", "del", net, "dev", dev])
    start = time.monotonic()
    node.start_agent()
    lab.routes.wait_weights(VIP, {"node1": 25, "node2": 75}, start)
