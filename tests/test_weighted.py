"""Weighted anycast on real FRR: two nodes run the agent with --weighted and FRR with the module's class
entries; the router installs next hops weighted by the nodes' local ready endpoints, and client flows
split in proportion. A change of class moves the address without a withdraw at the router."""

from __future__ import annotations

import json
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


def on(lab: Lab, node: str) -> dict[str, str]:
    """Where the VIP is on ``node``: {interface: VIP} over lo and the class interfaces."""
    out = {}
    for dev in ("lo", "l3lbw1", "l3lbw2", "l3lbw3", "l3lbw4"):
        if any(a["local"] == VIP for a in lab.node(node).ns.addresses(dev)):
            out[dev] = VIP
    return out


def test_weights_follow_local_ready_endpoints_and_flows_split_in_proportion(lab: Lab) -> None:
    start = time.monotonic()
    lab.ready_pods("node1", 1)
    lab.ready_pods("node2", 3)
    lab.routes.wait_weights(VIP, {"node1": 25, "node2": 75}, start)
    lab.routes.wait_weights(VIP6, {"node1": 25, "node2": 75}, start)
    assert on(lab, "node1") == {"l3lbw1": VIP} and on(lab, "node2") == {"l3lbw3": VIP}
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
    assert on(lab, "node1") == {"l3lbw2": VIP} and on(lab, "node2") == {"l3lbw2": VIP}


def test_withdraw_and_repair_with_weights(lab: Lab) -> None:
    lab.ready_pods("node1", 2)
    lab.ready_pods("node2", 2)
    lab.routes.wait_weights(VIP, {"node1": 50, "node2": 50}, time.monotonic() - 60)
    start = time.monotonic()
    lab.ready_pods("node1", 0)
    lab.routes.wait_for(VIP, {"node2"}, start)
    assert on(lab, "node1") == {}
    start = time.monotonic()
    lab.node("node2").ns.run(["ip", "addr", "del", f"{VIP}/32", "dev", "l3lbw2"])
    lab.routes.wait_for(VIP, {"node2"}, start)
    deadline = time.monotonic() + 2
    while on(lab, "node2") != {"l3lbw2": VIP} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert on(lab, "node2") == {"l3lbw2": VIP}, "restored on its class interface"
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
