"""End to end through real FRR: the router learns each Service IP over BGP unnumbered from exactly the
nodes that should serve it, and a client behind the router is served."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from kubelet import wait_for
from lab import VIP, VIP6, Lab
from testenv import ControlPlane

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]


@pytest.fixture
def lab(frr_lab: Lab) -> Lab:
    return frr_lab


@pytest.fixture(autouse=True)
def fresh(lab: Lab) -> Iterator[None]:
    """Each scenario starts with every agent running, no node cordoned and no pod ready: no route."""
    for node in lab.nodes:
        if node.agent is None or node.agent.poll() is not None:
            node.start_agent()
        lab.cordon(node.name, False)
        lab.set_ready(node.name, False)
    for node in lab.nodes:
        wait_for(
            lambda n=node: lab.http_get(n.name, "http://127.0.0.1:9655/readyz")[0] == 200,
            what=f"{node.name}'s agent to be ready",
        )
    lab.routes.wait_for(VIP, set(), time.monotonic() - 1, timeout=30)
    lab.routes.wait_for(VIP6, set(), time.monotonic() - 1, timeout=30)
    yield


def settle(lab: Lab, nodes: set[str], timeout: float = 30.0) -> None:
    lab.routes.wait_for(VIP, nodes, time.monotonic() - 1, timeout=timeout)
    assert lab.router_nexthops() == nodes, "ip -j route agrees with the netlink view"


def test_one_ready_endpoint_routes_to_its_node(lab: Lab) -> None:
    lab.set_ready("node1", True)
    settle(lab, {"node1"})
    assert lab.announcing() == ["node1"]
    assert lab.curl(flows=3) == {"node1": 3}


def test_second_node_gives_ecmp_and_both_serve(lab: Lab) -> None:
    lab.set_ready("node1", True)
    lab.set_ready("node2", True)
    settle(lab, {"node1", "node2"})
    served = lab.curl(flows=40)
    assert set(served) == {"node1", "node2"}, served


def test_not_ready_endpoint_drops_its_next_hop_and_traffic_goes_on(lab: Lab) -> None:
    lab.set_ready("node1", True)
    lab.set_ready("node2", True)
    settle(lab, {"node1", "node2"})
    lab.set_ready("node1", False)
    settle(lab, {"node2"})
    assert lab.curl(flows=10) == {"node2": 10}
    lab.set_ready("node2", False)
    settle(lab, set())  # all endpoints gone: the route is gone
    assert lab.announcing() == []


def test_ipv6_the_dual_stack_services_128_ecmp_and_withdraw(lab: Lab) -> None:
    """The Service is dual-stack: its /128 reaches the router over the sessions' IPv6 address family, with
    ECMP across two nodes, and the client is served over IPv6; a node whose pod stops being ready drops
    its next hop for both families."""
    lab.set_ready("node1", True)
    lab.set_ready("node2", True)
    start = time.monotonic()
    lab.routes.wait_for(VIP6, {"node1", "node2"}, start)
    assert lab.router_nexthops(VIP6) == {"node1", "node2"}
    served = lab.curl(VIP6, flows=40)
    assert set(served) == {"node1", "node2"}, served
    lab.set_ready("node1", False)
    lab.routes.wait_for(VIP6, {"node2"}, start)
    lab.routes.wait_for(VIP, {"node2"}, start)
    assert lab.curl(VIP6, flows=10) == {"node2": 10}
    lab.set_ready("node2", False)
    lab.routes.wait_for(VIP6, set(), start)


def test_a_cordoned_node_keeps_serving(lab: Lab) -> None:
    """kubectl cordon stops new pods, not traffic (as for Kubernetes' own load balancers since 1.19): once
    node3's agent has acted on its cordoned Node, the router still sends it its share of the flows."""
    lab.set_ready("node1", True)
    lab.set_ready("node3", True)
    settle(lab, {"node1", "node3"})
    mark = len(lab.node("node3").agent_log())
    lab.cordon("node3")
    lab.wait_handled("node3", "node SET node3", since=mark)
    time.sleep(0.5)  # what a withdrawal would take to reach the router, had it been made
    assert lab.router_nexthops() == {"node1", "node3"} and lab.held("node3") == {"lo"}
    assert set(lab.curl(flows=40)) == {"node1", "node3"}


def test_sigterm_withdraws_the_agents_routes(lab: Lab) -> None:
    lab.set_ready("node1", True)
    lab.set_ready("node2", True)
    settle(lab, {"node1", "node2"})
    assert lab.signal_agent("node2", signal.SIGTERM) == 0
    settle(lab, {"node1"}, timeout=5)


def test_sigkilled_agent_routes_expire_with_the_address_lifetime(lab: Lab) -> None:
    lab.set_ready("node1", True)
    lab.set_ready("node2", True)
    settle(lab, {"node1", "node2"})
    killed = time.monotonic()
    lab.signal_agent("node2", signal.SIGKILL)
    t = lab.routes.wait_for(VIP, {"node1"}, killed, timeout=lab.address_lifetime + 5)
    assert t - killed <= lab.address_lifetime + 1


def test_apiserver_down_keeps_the_routes(lab: Lab, control_plane: ControlPlane) -> None:
    lab.set_ready("node1", True)
    settle(lab, {"node1"})
    control_plane.stop_apiserver()
    try:
        time.sleep(lab.address_lifetime + 2)  # longer than the address lifetime: renewals keep them
        assert lab.router_nexthops() == {"node1"}
        assert lab.curl(flows=3) == {"node1": 3}
    finally:
        control_plane.restart_apiserver()


def test_metrics_health_and_events_follow_the_scenario(lab: Lab) -> None:
    assert lab.http_get("node1", "http://127.0.0.1:9655/readyz") == (200, "ok\n")
    assert lab.http_get("node1", "http://127.0.0.1:9655/healthz") == (200, "ok\n")
    before = lab.metrics("node1")
    lab.set_ready("node1", True)
    settle(lab, {"node1"})
    lab.routes.wait_for(VIP6, {"node1"}, time.monotonic() - 1)
    m = lab.metrics("node1")
    assert (
        m['l3lb_addresses{family="ipv4"}'] == m['l3lb_addresses{family="ipv6"}'] == 1
    )  # a dual-stack Service
    key = 'l3lb_announcements_total{reason="localReadyEndpoints"}'
    assert m[key] == before.get(key, 0) + 2
    assert m["l3lb_last_sync_timestamp_seconds"] > time.time() - 60
    assert m["l3lb_event_to_apply_seconds_count"] > before["l3lb_event_to_apply_seconds_count"]
    assert lab.metrics("node2")['l3lb_addresses{family="ipv4"}'] == 0

    lab.set_ready("node1", False)
    settle(lab, set())
    lab.routes.wait_for(VIP6, set(), time.monotonic() - 1)
    m = lab.metrics("node1")
    key = 'l3lb_withdrawals_total{reason="noLocalReadyEndpoint"}'
    assert m[key] == before.get(key, 0) + 2
    assert m['l3lb_addresses{family="ipv4"}'] == m['l3lb_addresses{family="ipv6"}'] == 0
    events = [e for e in lab.core.list_namespaced_event("lab").items if e.involved_object.name == "echo"]
    messages = {e.message for e in events if e.reason in ("Announced", "Withdrawn")}
    assert "node1 announces 10.0.100.5: 1 local ready endpoint" in messages
    assert "node1 withdrew 10.0.100.5: no local ready endpoint" in messages
