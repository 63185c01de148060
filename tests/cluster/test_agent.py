"""The node agent end to end: real control plane, real EndpointSlice controller, real netlink, one network
namespace per simulated node, several agents at once, all under the least-privilege identity."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from agents import Lab, SimNode, wait_addresses
from kubelet import (
    cordon,
    create_lb_service,
    create_node,
    create_pod,
    delete_pod_now,
    set_node_annotation,
    set_node_label,
    set_node_ready,
    set_node_taints,
    set_pod_ready,
    terminate_pod,
    wait_for,
)
from kubernetes import client
from testenv import ControlPlane

pytestmark = [pytest.mark.root, pytest.mark.cluster]

APP = {"app": "web"}


def _service(lab: Lab, name: str = "web", *, ip: str | None = None, policy: str = "Local") -> str:
    ip = ip or lab.ip(10)
    lab.service(name, ips=ip, policy=policy)
    return ip


def _pod(lab: Lab, node: SimNode, n: int, ready: bool = True) -> str:
    name = f"web-{n}"
    create_pod(lab.core, lab.namespace, name, node.name, f"10.244.0.{n}", labels=APP, ready=ready)
    return name


def _events(core: client.CoreV1Api, namespace: str, reason: str) -> list:
    return [e for e in core.list_namespaced_event(namespace).items if e.reason == reason]


def test_local_policy_follows_local_readiness(lab: Lab) -> None:
    a, b, c = lab.node("a"), lab.node("b"), lab.node("c")
    ip = _service(lab)
    pa, pb = _pod(lab, a, 1), _pod(lab, b, 2)
    wait_addresses(a, {ip})
    wait_addresses(b, {ip})
    wait_addresses(c, set())
    status = lab.core.read_namespaced_service_status("web", lab.namespace).status.load_balancer.ingress
    assert [(i.ip, i.ip_mode) for i in status] == [(ip, "VIP")]

    set_pod_ready(lab.core, lab.namespace, pa, False)  # only a forfeits
    wait_addresses(a, set())
    wait_addresses(b, {ip})
    assert "forfeiting" in a.log() and "no local ready endpoint" in a.log()

    terminate_pod(lab.core, lab.namespace, pb)  # a terminating pod forfeits before it stops
    wait_addresses(b, set())
    delete_pod_now(lab.core, lab.namespace, pb)


def test_cluster_policy_every_eligible_node_while_any_endpoint_is_ready(lab: Lab) -> None:
    """A NotReady node announces too: since KEP-3458 Kubernetes keeps NotReady nodes in its load balancers
    (a kubelet that stops reporting says nothing of the node's data plane)."""
    a, b = lab.node("a"), lab.node("b")
    notready = lab.node("notready", ready=False)
    for node in lab.nodes:
        node.wait_synced()  # so that each sees the Service come and get its IP as watch events
    ip = _service(lab, policy="Cluster")
    for node in lab.nodes:  # once each has acted on the Service with its IP: no ready endpoint anywhere yet
        node.wait_handled(f"services SET {lab.namespace}/web [{ip}]")
    assert a.addresses() == b.addresses() == notready.addresses() == set()
    pod = _pod(lab, a, 1)
    for node in lab.nodes:
        wait_addresses(node, {ip})
    set_pod_ready(lab.core, lab.namespace, pod, False)
    for node in lab.nodes:
        wait_addresses(node, set())


EXCLUDE = "node.kubernetes.io/exclude-from-external-load-balancers"
TAINT = [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]
HOLD = "example.com/hold"


@pytest.mark.parametrize(
    "how",
    ["exclude-label", "exclude-label-karpenter", "autoscaler-taint", "deleting", "drain", "cordon-flag"],
)
def test_an_ineligible_node_withdraws_everything(lab: Lab, how: str) -> None:
    """Each rule that takes a node out, as Kubernetes' service controller and kube-proxy read the Node
    (without --drain-seconds: withdrawn at once); cordon only with --withdraw-on-cordon."""
    a = lab.node("a", args=("--address-lifetime", "30", "--withdraw-on-cordon"))
    ip1 = _service(lab, "local")
    ip2 = _service(lab, "cluster", ip=lab.ip(11), policy="Cluster")
    _pod(lab, a, 1)
    wait_addresses(a, {ip1, ip2})
    if how == "exclude-label":
        set_node_label(lab.core, a.name, EXCLUDE, "true")
    elif how == "exclude-label-karpenter":  # Karpenter's value: not a boolean, so excluded (1.34+)
        set_node_label(lab.core, a.name, EXCLUDE, "karpenter")
    elif how == "autoscaler-taint":
        set_node_taints(lab.core, a.name, TAINT)
    elif how == "deleting":  # a finalizer keeps it, with its deletionTimestamp, until the test lets it go
        lab.core.patch_node(a.name, {"metadata": {"finalizers": [HOLD]}})
        lab.core.delete_node(a.name)
    elif how == "drain":
        set_node_annotation(lab.core, a.name, "l3lb.io/drain", "true")
    else:
        cordon(lab.core, a.name)
    try:
        wait_addresses(a, set())
        reason = {
            "exclude-label": "nodeExcluded",
            "exclude-label-karpenter": "nodeExcluded",
            "autoscaler-taint": "nodeToBeDeleted",
            "deleting": "nodeDeleting",
            "drain": "nodeDraining",
            "cordon-flag": "nodeCordoned",
        }[how]
        assert f'l3lb_withdrawals_total{{reason="{reason}"}}' in a.metrics()
    finally:
        if how == "deleting":
            lab.core.patch_node(a.name, {"metadata": {"finalizers": None}})
            wait_for(lambda: a.name not in {n.metadata.name for n in lab.core.list_node().items})
            create_node(lab.core, a.name)  # for the lab's own clean-up
    if how == "drain":
        set_node_annotation(lab.core, a.name, "l3lb.io/drain", None)
        wait_addresses(a, {ip1, ip2})


def test_what_keeps_a_node_announcing(lab: Lab) -> None:
    """A cordon (Kubernetes since 1.19, kubernetes#90823; MetalLB reverted the same withdrawal, #2715), a
    NotReady node (KEP-3458), the exclude label set to "false" (1.34+), and a drain annotation that is no
    boolean (a Warning Event on the Node, once): the node keeps announcing, without a flap."""
    a = lab.node("a")
    ip1 = _service(lab, "local")
    ip2 = _service(lab, "cluster", ip=lab.ip(11), policy="Cluster")
    _pod(lab, a, 1)
    wait_addresses(a, {ip1, ip2})
    monitor = subprocess.Popen(a.ns.argv(["ip", "monitor", "address"]), stdout=subprocess.PIPE, text=True)
    try:
        mark = a.mark()
        cordon(lab.core, a.name)
        set_node_ready(lab.core, a.name, False)
        set_node_label(lab.core, a.name, EXCLUDE, "false")
        set_node_annotation(lab.core, a.name, "l3lb.io/drain", "yes")
        a.wait_handled(f"node SET {a.name}", since=mark)
        (warning,) = wait_for(
            lambda: [
                e
                for e in lab.core.list_namespaced_event("default").items
                if e.reason == "InvalidAnnotation" and e.involved_object.name == a.name
            ],
            what="a Warning Event on the Node",
        )
        assert (
            warning.type == "Warning" and "l3lb.io/drain: 'yes' is neither true nor false" in warning.message
        )
        assert "the node does not drain" in a.log()
    finally:
        monitor.terminate()
    assert "Deleted" not in monitor.communicate(timeout=5)[0]
    assert a.addresses() == {ip1, ip2}


def test_a_drain_moves_the_addresses_to_l3lbdrain_then_withdraws_and_undrain_brings_them_back(
    lab: Lab,
) -> None:
    """--drain-seconds 3 and l3lb.io/drain=true: the addresses leave lo for l3lbdrain at once and go from
    there 3 s later; without the annotation they come back on lo. SIGTERM drains the same way, and the
    agent exits 0 once the drain is over."""
    a = lab.node("a", args=("--address-lifetime", "30", "--drain-seconds", "3"))
    ip1 = _service(lab, "local")
    ip2 = _service(lab, "cluster", ip=lab.ip(11), policy="Cluster")
    _pod(lab, a, 1)
    wait_addresses(a, {ip1, ip2})
    set_node_annotation(lab.core, a.name, "l3lb.io/drain", "true")
    start = time.monotonic()
    wait_for(lambda: a.ns.host_addresses("l3lbdrain") == {ip1, ip2}, what="the addresses on l3lbdrain")
    assert a.addresses() == set(), "moved, not copied"
    wait_for(lambda: not a.ns.host_addresses("l3lbdrain"), timeout=10, what="the drain to end")
    assert 2.5 < time.monotonic() - start < 5
    assert a.addresses() == set() and "forfeiting" in a.log() and "it has drained" in a.log()
    set_node_annotation(lab.core, a.name, "l3lb.io/drain", None)
    wait_addresses(a, {ip1, ip2})

    stopped = time.monotonic()
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: a.ns.host_addresses("l3lbdrain") == {ip1, ip2}, what="the stop's drain")
    assert a.addresses() == set()
    assert a.proc.wait(15) == 0
    a.ns.procs.remove(a.proc)
    assert 2.5 < time.monotonic() - stopped < 6, "it exits when the drain is over"
    assert a.addresses() == set() and not a.ns.host_addresses("l3lbdrain")

    a.start("--drain-seconds", "30")
    wait_addresses(a, {ip1, ip2})
    a.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: a.ns.host_addresses("l3lbdrain") == {ip1, ip2}, what="the stop's drain")
    stopped = time.monotonic()
    assert a.signal(signal.SIGTERM) == 0, "a second SIGTERM ends the drain"
    assert time.monotonic() - stopped < 3 and not a.ns.host_addresses("l3lbdrain")


def test_class_filtering(lab: Lab) -> None:
    ours = lab.node("ours")
    classless = lab.node("classless", args=("--address-lifetime", "30"), start=False)
    # This agent also takes class-less Services: the default, unless --no-default-class.
    classless.argv.remove("--no-default-class")
    # Agents with another configuration elect their own allocator (all agents of one Lease must agree on
    # what is theirs): this one uses the Lease in kube-system that deploy/rbac.yaml grants.
    classless.argv[classless.argv.index("--lease-namespace") + 1] = "kube-system"
    classless.start()
    ours.wait_synced()  # so that it sees the Services come as watch events
    mine = _service(lab, "mine", policy="Cluster")
    create_lb_service(
        lab.core,
        lab.namespace,
        "other",
        selector=APP,
        policy="Cluster",
        lb_class="example.com/other",
        ips=lab.ip(20),
    )
    create_lb_service(lab.core, lab.namespace, "noclass", selector=APP, policy="Cluster", ips=lab.ip(21))
    create_lb_service(lab.core, lab.namespace, "plain", selector=APP, service_type="ClusterIP")
    _pod(lab, ours, 1)
    wait_addresses(ours, {mine})
    wait_addresses(classless, {mine, lab.ip(21)})
    ours.wait_handled(f"services SET {lab.namespace}/noclass [{lab.ip(21)}]")
    assert ours.addresses() == {mine}
    other = lab.core.read_namespaced_service_status("other", lab.namespace).status.load_balancer.ingress
    assert not other, "a Service of another class is never touched"


def test_strays_collected_foreign_addresses_left_alone_and_deletions_repaired(lab: Lab) -> None:
    a = lab.node("a", start=False)
    stray, ip = lab.ip(99), lab.ip(10)
    foreign = ["10.250.0.1/32", f"{lab.prefix.rsplit('.', 1)[0]}.128/25", "fd00:beef::1/128"]
    a.ns.run(["ip", "addr", "add", f"{stray}/32", "dev", "lo"])
    for cidr in foreign:
        a.ns.run(["ip", "addr", "add", cidr, "dev", "lo"])
    a.start()
    _service(lab)
    _pod(lab, a, 1)
    wait_addresses(a, {ip, "10.250.0.1", "fd00:beef::1"})
    assert any(x["local"].endswith(".128") and x["prefixlen"] == 25 for x in a.ns.addresses())
    assert f"collecting stray {stray}" in a.log()

    a.ns.run(["ip", "addr", "add", f"{lab.ip(98)}/32", "dev", "lo"])  # a person adds one: collected
    a.ns.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"])  # a person removes ours: restored
    start = time.monotonic()
    wait_addresses(a, {ip, "10.250.0.1", "fd00:beef::1"}, timeout=5)
    assert time.monotonic() - start < 1.5
    assert f"restoring {ip}" in a.log()


def test_requests_outside_the_prefix_and_malformed_ones_get_warning_events(lab: Lab) -> None:
    a = lab.node("a")
    lab.service("outside", ips="192.0.2.7")
    lab.service("bad", ips="10.0.0.1,banana")
    _pod(lab, a, 1)
    wait_for(lambda: _events(lab.core, lab.namespace, "IPOutsidePool"), what="an IPOutsidePool event")
    (bad,) = wait_for(
        lambda: _events(lab.core, lab.namespace, "InvalidLoadBalancerIPs"), what="an invalid-IPs event"
    )
    assert "banana" in bad.message and bad.type == "Warning" and bad.involved_object.name == "bad"
    assert a.addresses() == set()
    assert a.proc.poll() is None, "bad input never crashes the agent"


def test_apiserver_outage_holds_addresses_then_catches_up(lab: Lab, control_plane: ControlPlane) -> None:
    a = lab.node("a")
    ip = _service(lab)
    pod = _pod(lab, a, 1)
    wait_addresses(a, {ip})
    control_plane.stop_apiserver()
    try:
        time.sleep(10)
        assert a.addresses() == {ip}, "addresses are held while the apiserver is down"
    finally:
        control_plane.restart_apiserver()
    set_pod_ready(lab.core, lab.namespace, pod, False)
    wait_addresses(a, set(), timeout=30)


def test_sigkill_and_restart_adopts_without_a_delete(lab: Lab) -> None:
    a = lab.node("a")
    ip = _service(lab)
    _pod(lab, a, 1)
    wait_addresses(a, {ip})
    monitor = subprocess.Popen(a.ns.argv(["ip", "monitor", "address"]), stdout=subprocess.PIPE, text=True)
    try:
        a.signal(signal.SIGKILL)
        a.start()
        a.wait_synced()
        assert "adopting" in a.log()
    finally:
        monitor.terminate()
    out = monitor.communicate(timeout=5)[0]
    assert "Deleted" not in out, out
    assert a.addresses() == {ip}


def test_sigterm_withdraws_and_keep_on_exit_keeps(lab: Lab) -> None:
    a = lab.node("a")
    ip = _service(lab, policy="Cluster")
    _pod(lab, a, 1)
    wait_addresses(a, {ip})
    assert a.signal(signal.SIGTERM) == 0
    assert a.addresses() == set()
    a.start("--keep-on-exit")
    wait_addresses(a, {ip})
    assert a.signal(signal.SIGINT) == 0
    assert a.addresses() == {ip}


def test_sigkill_without_restart_expires_with_the_lifetime(lab: Lab) -> None:
    a = lab.node("a", args=("--address-lifetime", "3"))
    ip = _service(lab)
    _pod(lab, a, 1)
    wait_addresses(a, {ip})
    (entry,) = [x for x in a.ns.addresses() if x["local"] == ip]
    assert 0 < entry["valid_life_time"] <= 3
    time.sleep(4)  # renewed: still there
    assert a.addresses() == {ip}
    # The renewals' own netlink echoes start no sync: every event -> apply time is an event's, well under 1 s.
    m = a.metrics()
    assert m['l3lb_event_to_apply_seconds_bucket{le="0.25"}'] == m["l3lb_event_to_apply_seconds_count"] > 0
    a.signal(signal.SIGKILL)
    wait_addresses(a, set(), timeout=5)
