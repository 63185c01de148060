"""The switch from another load balancer, step by step as the README's "Coming from MetalLB" says, in the
FRR lab: no Service renumbered, and the router never without a route to it while the client keeps being
served.

The old controller is played by what it leaves behind: a Service with MetalLB's annotations whose status
field manager ``controller`` wrote (MetalLB's controller sets none, so the apiserver takes its binary's
name), and the Service's IP announced from the nodes that serve it, on an interface of its own that the
node's FRR redistributes (as PureLB's kube-lb0 is; MetalLB's speakers announce from their own BGP
sessions instead, which the router sees as another path just the same)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubelet import create_lb_service, wait_for, write_status_as
from kubernetes import client
from lab import APP, HTTP_PORT, NAMESPACE, PREFIX, PREFIX6, Lab
from netns import ip

from l3lb.k8s.api import Api

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]
SHOP = "10.0.100.7"
OLD = "metallb0"
"""The old controller's interface on each node."""

METALLB_CONFIG = f"""\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {{name: lab, namespace: metallb-system}}
spec:
  addresses: [{PREFIX}, "{PREFIX6}"]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {{name: lab, namespace: metallb-system}}
"""


@pytest.fixture
def lab(frr_lab: Lab) -> Iterator[Lab]:
    """The session's FRR lab with its agents stopped (the old controller's time); afterwards as found."""
    argv = {n.name: list(n.argv) for n in frr_lab.nodes}
    for node in frr_lab.nodes:
        if node.agent is not None and node.agent.poll() is None:
            frr_lab.signal_agent(node.name, signal.SIGTERM)
        frr_lab.set_ready(node.name, node.name in ("node1", "node2"))
    try:
        yield frr_lab
    finally:
        for node in frr_lab.nodes:
            node.ns.run(["ip", "link", "del", OLD], check=False)
            if node.name in ("node1", "node2"):
                old_network(frr_lab, node.name, False)
            if node.agent is not None and node.agent.poll() is None:
                frr_lab.signal_agent(node.name, signal.SIGTERM)
            node.argv = argv[node.name]
            node.start_agent()
        with contextlib.suppress(client.ApiException):
            frr_lab.core.delete_namespaced_service("shop", NAMESPACE)


def old_network(lab: Lab, name: str, on: bool) -> None:
    """The old controller's announcement of SHOP from ``name``, on or off."""
    node = lab.node(name)
    node.frr.vtysh(
        "configure terminal",
        f"router bgp {node.asn}",
        "address-family ipv4 unicast",
        f"{'' if on else 'no '}network {SHOP}/32",
    )


def with_config(argv: list[str], pools: Path) -> list[str]:
    """The agent's command line with the imported pools instead of its --prefix options."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--prefix":
            skip = True
        else:
            out.append(arg)
    return [*out, "--config", str(pools)]


def managers(lab: Lab) -> set[str]:
    svc = Api(lab.core.api_client).get_json(f"/api/v1/namespaces/{NAMESPACE}/services/shop")
    return {
        m.get("manager")
        for m in svc["metadata"].get("managedFields") or []
        if m.get("subresource") == "status"
    }


class Client(threading.Thread):
    """The lab's client, asking the Service over and over on new connections until stopped."""

    def __init__(self, lab: Lab, ip: str) -> None:
        super().__init__(daemon=True)
        self.lab, self.ip = lab, ip
        self.seen: Counter[str] = Counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.seen += self.lab.curl(self.ip, flows=10)

    def stop(self) -> Counter[str]:
        self.done.set()
        self.join(60)
        return self.seen


def test_from_metallb_to_l3lb_without_renumbering_or_a_window(lab: Lab, tmp_path: Path) -> None:
    # ---- before: the old controller's Service, status and announcement
    create_lb_service(
        lab.core,
        NAMESPACE,
        "shop",
        selector=APP,
        policy="Local",
        port=HTTP_PORT,
        target_port=HTTP_PORT,
        annotations={
            "metallb.universe.tf/loadBalancerIPs": SHOP,
            "metallb.universe.tf/allow-shared-ip": "shop",
        },
    )
    write_status_as(lab.core, NAMESPACE, "shop", [SHOP], "controller")
    start = time.monotonic()
    for name in ("node1", "node2"):
        ns = lab.node(name).ns.name
        ip("-n", ns, "link", "add", OLD, "type", "veth", "peer", "name", f"{OLD}p")
        ip("-n", ns, "link", "set", OLD, "up")
        ip("-n", ns, "link", "set", f"{OLD}p", "up")
        ip("-n", ns, "addr", "add", f"{SHOP}/32", "dev", OLD)
        # Announced as MetalLB's FRR mode does, a network statement (the host route on metallb0 is its RIB
        # entry: import-check); l3lb's redistribution takes only its own interfaces' routes.
        old_network(lab, name, True)
    established = lab.routes.wait_for(SHOP, {"node1", "node2"}, start)
    client = Client(lab, SHOP)
    client.start()

    # ---- 1. l3lb import: MetalLB's pools as l3lb's
    node1 = lab.node("node1")
    metallb = tmp_path / "metallb.yaml"
    metallb.write_text(METALLB_CONFIG)
    pools = tmp_path / "pools.yaml"
    pools.write_text(node1.ns.run([sys.executable, "-m", "l3lb", "import", "-f", str(metallb)]).stdout)

    # ---- 2. l3lb beside it, dry run: what it would announce and take over
    dry = node1.ns.popen(
        [*with_config(node1.argv, pools), "--dry-run", "--metrics-address", "off"], "dry-run"
    )
    log = node1.ns.logdir / f"{node1.ns.name}-dry-run.log"  # type: ignore[operator]
    wait_for(
        lambda: f"dry run: would take over status of {NAMESPACE}/shop as it is: {SHOP}" in log.read_text(),
        what="the dry run's decision",
    )
    assert f"assuming {SHOP} for {NAMESPACE}/shop" in log.read_text()
    dry.send_signal(signal.SIGTERM)
    assert dry.wait(15) == 0
    node1.ns.procs.remove(dry)
    assert node1.ns.host_addresses() == set(), "a dry run puts nothing on lo"

    # ---- 3. compare: l3lb check with those pools; nothing would move, the old controller is named
    check = node1.ns.run(
        [
            sys.executable,
            "-m",
            "l3lb",
            "check",
            "-o",
            "json",
            "--config",
            str(pools),
            "--node-name",
            "node1",
            "--kubeconfig",
            str(lab.kubeconfig),
            "--lease-namespace",
            NAMESPACE,
            "--vty-socket",
            str(node1.frr.dir),
        ],
        check=False,
    )
    takeover = [r for r in json.loads(check.stdout) if r["check"] == "takeover"]
    assert [r["message"] for r in takeover] == [
        "status.loadBalancer of 1 Service(s) of ours was written by controller (MetalLB's controller (its "
        f"binary is named controller)) after l3lb, if at all: {NAMESPACE}/shop"
    ], "no Service would move"

    # ---- 4. switch: the old controller stops; l3lb runs with the imported pools; then the old speakers go
    for node in lab.nodes:
        node.argv = with_config(node.argv, pools)
        node.start_agent()
    for name in ("node1", "node2"):
        wait_for(lambda n=name: "lo" in lab.held(n, SHOP), what=f"{name} announcing {SHOP} on lo")
    wait_for(
        lambda: f"l3lb/{NAMESPACE}" in managers(lab),
        what="the leader to own shop's status",
    )
    for name in ("node1", "node2"):
        ip("-n", lab.node(name).ns.name, "link", "del", OLD)
    time.sleep(3)  # the router hears of it (coalesce-time 100 ms) and the client keeps asking
    seen = client.stop()

    # ---- after: same IP, routed all along, every request served
    svc = lab.core.read_namespaced_service("shop", NAMESPACE)
    assert [i.ip for i in svc.status.load_balancer.ingress] == [SHOP], "not renumbered"
    assert lab.routes.nodes(SHOP) == {"node1", "node2"}
    gaps = [
        (t, nodes) for t, dst, nodes in lab.routes.changes if dst == SHOP and t >= established and not nodes
    ]
    assert gaps == [], "the router never lost the route"
    assert set(seen) <= {"node1", "node2"} and sum(seen.values()) >= 20, f"no errors: {seen}"
