"""A graceful drain at the router (RFC 8326) and the hold-down, on real FRR: two nodes whose agents run with
--drain-seconds, the module's drain entry in their FRR config, and an FRR router that peers eBGP with them.

What the router does with GRACEFUL_SHUTDOWN is measured here, not configured: the lab's router has no
policy that sets LOCAL_PREF (its inbound route-maps only filter prefixes), and FRR 8.4 sets LOCAL_PREF 0 on
a path it receives with 65535:0 from an eBGP peer by itself (bgp_update() in bgpd/bgp_route.c, after the
inbound route-map). ``Lab.router_honours_graceful_shutdown(False)`` deletes the community in the inbound
route-map instead, as a router without that behaviour or policy would ignore it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from kubelet import create_pod, set_pod_ready, wait_for
from lab import HTTP_PORT, NAMESPACE, VIP, Lab

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]

DRAIN = 8
WEB = "10.0.100.6"  # a Cluster Service: every eligible node holds it while a pod is ready anywhere
FLAP = "10.0.100.7"  # a Local Service with a 10 s hold-down


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2, address_lifetime=10, drain_seconds=DRAIN, log=lambda _: None) as lab:
        lab.create_service()
        lab.create_service("web", WEB, policy="Cluster")
        yield lab


@pytest.fixture(autouse=True)
def fresh(lab: Lab) -> Iterator[None]:
    """Every agent running, no node draining, both pods ready; the router back to its own behaviour."""
    for node in lab.nodes:
        if node.agent is None or node.agent.poll() is not None:
            node.start_agent()
        lab.drain(node.name, False)
        lab.set_ready(node.name, True)
    lab.router_honours_graceful_shutdown(True)
    lab.routes.wait_for(WEB, {"node1", "node2"}, time.monotonic() - 1, timeout=30)
    yield


def routes_since(lab: Lab, ip: str, t0: float) -> list[tuple[float, frozenset[str]]]:
    return [(t - t0, nodes) for t, dest, nodes in lab.routes.changes if dest == ip and t >= t0]


def test_a_draining_node_leaves_the_multipath_at_once_and_its_withdrawal_later_costs_nothing(
    lab: Lab,
) -> None:
    """2(a): both nodes hold a Cluster IP, node2 is annotated l3lb.io/drain=true. Its path gets
    GRACEFUL_SHUTDOWN, the router sets its LOCAL_PREF to 0 by itself and drops it from the multipath within
    FRR's floor, the route staying installed through node1; DRAIN seconds later node2 withdraws, which the
    router's forwarding no longer notices. A client asking 20 times a second all along sees no failure.
    Without the annotation node2 is back in the multipath."""
    client = lab.requests(WEB, seconds=DRAIN + 6, rate=20)
    time.sleep(2)
    t0 = time.monotonic()
    lab.drain("node2")
    left = lab.routes.wait_for(WEB, {"node1"}, t0) - t0
    paths = lab.router_paths(WEB)
    assert paths["node2"]["localpref"] == 0 and "graceful-shutdown" in paths["node2"]["community"]
    assert paths["node1"]["localpref"] != 0 and paths["node1"]["best"], paths
    assert lab.held("node2", WEB) == {"l3lbdrain"} and lab.held("node1", WEB) == {"lo"}
    status = next(
        x for x in lab.l3lb("node2", "status").stdout.splitlines() if x.startswith(f"{NAMESPACE}/web")
    )
    assert "nodeDraining" in status and f"{WEB}: withdrawn in" in status and "(drain)" in status, status
    wait_for(lambda: "node2" not in lab.router_paths(WEB), timeout=DRAIN + 5, what="node2's withdrawal")
    gone = time.monotonic() - t0
    result = lab.requests_result(client)
    assert left < 1.0, f"out of the multipath after {left:.3f} s"
    assert DRAIN - 0.5 < gone < DRAIN + 3, f"withdrawn after {gone:.1f} s"
    assert routes_since(lab, WEB, t0) == [(pytest.approx(left), frozenset({"node1"}))], "the route stayed"
    assert result["errors"] == [], result
    assert set(result["served"]) == {"node1", "node2"}, result
    lab.drain("node2", False)
    back = lab.routes.wait_for(WEB, {"node1", "node2"}, time.monotonic()) - time.monotonic()
    assert back < 2.0 and lab.held("node2", WEB) == {"lo"}


def test_a_node_that_holds_an_ip_alone_keeps_its_route_until_the_drain_ends(lab: Lab) -> None:
    """2(b): only node1 has a ready pod of the Local Service; it drains. The router has no other path, so
    it keeps the one at LOCAL_PREF 0: no blackhole while the node still serves; DRAIN seconds later the
    route goes."""
    lab.set_ready("node2", False)
    lab.routes.wait_for(VIP, {"node1"}, time.monotonic() - 1)
    client = lab.requests(VIP, seconds=DRAIN - 1, rate=20)
    t0 = time.monotonic()
    lab.drain("node1")
    wait_for(lambda: lab.held("node1") == {"l3lbdrain"}, what="node1's VIP on l3lbdrain")
    wait_for(lambda: lab.router_paths(VIP).get("node1", {}).get("localpref") == 0, what="LOCAL_PREF 0")
    gone = lab.routes.wait_for(VIP, set(), t0, timeout=DRAIN + 5) - t0
    result = lab.requests_result(client)
    assert DRAIN - 0.5 < gone < DRAIN + 3, f"the route went after {gone:.1f} s"
    assert routes_since(lab, VIP, t0) == [(pytest.approx(gone), frozenset())], "installed until then"
    assert result["errors"] == [] and set(result["served"]) == {"node1"}, result


def test_without_the_routers_help_equal_ecmp_stays_until_the_withdrawal(lab: Lab) -> None:
    """2(c): the router deletes the community as it comes in (a router that does not honour it): node2's
    path keeps LOCAL_PREF 100 and its equal share of the flows for the whole drain, and leaves at its
    withdrawal, DRAIN seconds later, as with --drain-seconds 0 only later. What the client sees then is
    recorded, not asserted: connections that node2 served when its address went break."""
    lab.router_honours_graceful_shutdown(False)
    wait_for(lambda: lab.router_paths(WEB).get("node2", {}).get("multipath"), what="node2 in the multipath")
    client = lab.requests(WEB, seconds=DRAIN + 4, rate=20)
    time.sleep(1)
    t0 = time.monotonic()
    lab.drain("node2")
    wait_for(lambda: lab.held("node2", WEB) == {"l3lbdrain"}, what="node2's IP on l3lbdrain")
    time.sleep(1)
    paths = lab.router_paths(WEB)
    assert paths["node2"]["localpref"] == paths["node1"]["localpref"] != 0, paths
    assert "graceful-shutdown" not in paths["node2"]["community"] and paths["node2"]["multipath"]
    left = lab.routes.wait_for(WEB, {"node1"}, t0, timeout=DRAIN + 5) - t0
    result = lab.requests_result(client)
    assert DRAIN - 0.5 < left < DRAIN + 3, f"equal ECMP until the withdrawal, {left:.1f} s"
    print(
        f"\nwithout the router's help: node2 left the multipath {left:.2f} s after the annotation; "
        f"client: {result}"
    )


def test_sigterm_drains_the_agents_ips_before_it_exits(lab: Lab) -> None:
    """A stop: node2's agent moves what it holds to l3lbdrain, the router drops its path from the
    multipath at once, and the agent exits 0 when the drain is over, having withdrawn it."""
    t0 = time.monotonic()
    n2 = lab.node("node2")
    assert n2.agent is not None
    n2.agent.send_signal(signal.SIGTERM)
    left = lab.routes.wait_for(WEB, {"node1"}, t0) - t0
    assert n2.agent.wait(DRAIN + 10) == 0
    exited = time.monotonic() - t0
    n2.ns.procs.remove(n2.agent)
    assert left < 1.0 and DRAIN - 0.5 < exited < DRAIN + 3, (left, exited)
    assert lab.held("node2", WEB) == set(), "withdrawn before the agent exited"
    # node2's FRR then withdraws the (drained, non-multipath) path from the router: zebra, bgpd and an UPDATE,
    # which may land just after the agent's exit on a loaded machine
    wait_for(lambda: "node2" not in lab.router_paths(WEB), timeout=5, what="node2's path withdrawn")
    assert routes_since(lab, WEB, t0) == [(pytest.approx(left), frozenset({"node1"}))]


def test_a_pod_flapping_every_2s_under_a_10s_hold_down_is_announced_at_most_once(lab: Lab) -> None:
    """l3lb.io/announce-hold-down: 10s on a Local Service whose only pod flips Ready every 2 s for 30 s:
    the router sees no announcement while it flaps (each flip is a suppressed announcement on node1), and
    exactly one 10 s after it stays Ready; l3lb status shows the hold-down under way."""
    lab.create_service(
        "flap", FLAP, annotations={"l3lb.io/announce-hold-down": "10s"}, selector={"app": "flap"}
    )
    create_pod(
        lab.core,
        NAMESPACE,
        "flap",
        "node1",
        "10.244.1.30",
        labels={"app": "flap"},
        ready=False,
        port=HTTP_PORT,
    )
    before = lab.metrics("node1").get("l3lb_suppressed_announcements_total", 0)
    t0 = time.monotonic()
    for k in range(15):  # Ready at 0, 4, 8, ... 28 s; not Ready at 2, 6, ... 26 s
        if k:
            time.sleep(2)
        set_pod_ready(lab.core, NAMESPACE, "flap", k % 2 == 0)
    steady = time.monotonic()  # and Ready from here on
    time.sleep(3)
    status = lab.l3lb("node1", "status").stdout
    assert f"{FLAP}: announced in" in status and "(hold-down)" in status, status
    announced = lab.routes.wait_for(FLAP, {"node1"}, t0, timeout=20) - steady
    time.sleep(2)
    ups = [(t, nodes) for t, nodes in routes_since(lab, FLAP, t0) if nodes]
    assert len(ups) == 1, f"announcements at the router: {ups}"
    assert 9.5 < announced < 11.5, f"announced {announced:.1f} s after the pod stayed Ready"
    assert lab.metrics("node1")["l3lb_suppressed_announcements_total"] - before >= 7
