"""Weighted anycast on real FRR: two nodes run the agent with --weighted and FRR with the module's class
entries; the router installs next hops weighted by the nodes' local ready endpoints, and client flows
split in proportion. A change of class moves the address without a withdraw at the router."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kubelet import create_pod, set_pod_ready
from kubernetes import client
from lab import APP, HTTP_PORT, NAMESPACE, VIP, VIP6, Lab

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2, address_lifetime=10, weight_classes=4, log=lambda _: None) as lab:
        lab.create_service()
        yield lab


def ready_pods(lab: Lab, node: str, n: int) -> None:
    """Exactly ``n`` Ready pods on ``node`` (the node's pod server answers for all of them)."""
    index = lab.node(node).index
    for k in range(4):
        name = f"echo-{node}-{k}"
        try:
            set_pod_ready(lab.core, NAMESPACE, name, k < n)
        except client.ApiException as err:
            if err.status != 404:
                raise
            create_pod(
                lab.core,
                NAMESPACE,
                name,
                node,
                f"10.244.{index}.{20 + k},fd00:244:{index}::{20 + k}",
                labels=APP,
                ready=k < n,
                port=HTTP_PORT,
            )


def wait_weights(lab: Lab, want: dict[str, int], after: float, timeout: float = 20.0, ip: str = VIP) -> float:
    """The time at which the router's route to ``ip`` first had exactly these next-hop weights."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [t for t, dst, w in lab.routes.weight_changes if dst == ip and t >= after and w == want]
        if got and lab.routes.weights.get(ip) == want:
            return got[0]
        time.sleep(0.02)
    raise AssertionError(f"router weights of {ip}: {lab.routes.weights.get(ip)}, expected {want}")


def on(lab: Lab, node: str) -> dict[str, str]:
    """Where the VIP is on ``node``: {interface: VIP} over lo and the class interfaces."""
    out = {}
    for dev in ("lo", "l3lbw1", "l3lbw2", "l3lbw3", "l3lbw4"):
        if any(a["local"] == VIP for a in lab.node(node).ns.addresses(dev)):
            out[dev] = VIP
    return out


def test_weights_follow_local_ready_endpoints_and_flows_split_in_proportion(lab: Lab) -> None:
    start = time.monotonic()
    ready_pods(lab, "node1", 1)
    ready_pods(lab, "node2", 3)
    wait_weights(lab, {"node1": 25, "node2": 75}, start)
    wait_weights(lab, {"node1": 25, "node2": 75}, start, ip=VIP6)
    assert on(lab, "node1") == {"l3lbw1": VIP} and on(lab, "node2") == {"l3lbw3": VIP}
    for ip in (VIP, VIP6):
        served = lab.curl(ip, flows=200)
        assert sum(served.values()) == 200, served
        assert 0.65 <= served["node2"] / 200 <= 0.85, f"1:3 weights should give about 150 of 200: {served}"


def test_a_change_of_class_never_withdraws_at_the_router(lab: Lab) -> None:
    ready_pods(lab, "node1", 1)
    ready_pods(lab, "node2", 3)
    wait_weights(lab, {"node1": 25, "node2": 75}, time.monotonic() - 60)
    time.sleep(6)  # past the agents' hold-down after their last move
    start = time.monotonic()
    ready_pods(lab, "node1", 2)
    ready_pods(lab, "node2", 2)
    t = wait_weights(lab, {"node1": 50, "node2": 50}, start)
    assert t - start < 5, f"new weights after {t - start:.2f} s"
    seen = [nodes for at, ip, nodes in lab.routes.changes if ip == VIP and at >= start]
    assert all(nodes == {"node1", "node2"} for nodes in seen), f"a next hop went away meanwhile: {seen}"
    assert on(lab, "node1") == {"l3lbw2": VIP} and on(lab, "node2") == {"l3lbw2": VIP}


def test_withdraw_and_repair_with_weights(lab: Lab) -> None:
    ready_pods(lab, "node1", 2)
    ready_pods(lab, "node2", 2)
    wait_weights(lab, {"node1": 50, "node2": 50}, time.monotonic() - 60)
    start = time.monotonic()
    ready_pods(lab, "node1", 0)
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
    ready_pods(lab, "node1", 1)
    ready_pods(lab, "node2", 3)
    wait_weights(lab, {"node1": 25, "node2": 75}, time.monotonic() - 60)
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
