"""``l3lb status`` and ``l3lb check`` against the real control plane and real FRR in the lab, in both output
formats: a healthy node, and each check failing on its own."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator

import pytest
from kubelet import create_lb_service, wait_for
from kubernetes import client
from lab import NAMESPACE, VIP, VIP6, Lab
from testenv import ControlPlane

from l3lb.k8s.api import Api

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.frr, pytest.mark.nix]


@pytest.fixture
def lab(frr_lab: Lab) -> Iterator[Lab]:
    """node1 serves lab/echo; node1's namespace has the ARP sysctls a NixOS host gets from the module."""
    for node in frr_lab.nodes:
        if node.agent is None or node.agent.poll() is not None:
            node.start_agent()
        frr_lab.cordon(node.name, False)
        frr_lab.drain(node.name, False)
        frr_lab.set_ready(node.name, node.name == "node1")
    frr_lab.node("node1").ns.sysctl("net.ipv4.conf.all.arp_ignore", "1")
    frr_lab.node("node1").ns.sysctl("net.ipv4.conf.all.arp_announce", "2")
    frr_lab.routes.wait_for(VIP, {"node1"}, time.monotonic() - 1, timeout=30)
    yield frr_lab


def check_json(lab: Lab, node: str, *args: str) -> tuple[int, dict[str, list[dict]]]:
    out = lab.l3lb(node, "check", "-o", "json", *args)
    by_check: dict[str, list[dict]] = {}
    for r in json.loads(out.stdout):
        by_check.setdefault(r["check"], []).append(r)
    return out.returncode, by_check


def statuses(results: list[dict]) -> set[str]:
    return {r["status"] for r in results}


def test_status_on_the_node_reads_api_interface_and_frr(lab: Lab) -> None:
    out = lab.l3lb("node1", "status", "-o", "json", check=True)
    (row,) = [r for r in json.loads(out.stdout)["services"] if r["service"] == f"{NAMESPACE}/echo"]
    assert row["ips"] == [VIP, VIP6] and row["policy"] == "Local" and row["local_ready"] == 1
    assert row["announced"] is True and row["reason"] == "localReadyEndpoints"
    assert row["on_interface"] == [VIP, VIP6]
    assert row["frr"] == {VIP: {"rib": True, "peers": 1}, VIP6: {"rib": True, "peers": 1}}
    table = lab.l3lb("node1", "status", check=True).stdout
    line = next(x for x in table.splitlines() if x.startswith(f"{NAMESPACE}/echo"))
    assert "yes" in line and "localReadyEndpoints" in line and "10.0.100.5: rib, 1 peer" in line


def test_status_of_another_node_from_the_api_alone(lab: Lab) -> None:
    out = lab.l3lb("node1", "status", "--node", "node2", "-o", "json", check=True)
    (row,) = [r for r in json.loads(out.stdout)["services"] if r["service"] == f"{NAMESPACE}/echo"]
    assert (row["announced"], row["reason"], row["local_ready"]) == (False, "noLocalReadyEndpoint", 0)
    assert row["on_interface"] is None and row["frr"] == {}
    table = lab.l3lb("node1", "status", "--node", "node2", check=True).stdout
    assert "node node2 (from the API alone)" in table and "noLocalReadyEndpoint" in table

    def reason(*args: str) -> str:
        out = lab.l3lb("node1", "status", "--node", "node2", "-o", "json", *args, check=True)
        (row,) = [r for r in json.loads(out.stdout)["services"] if r["service"] == f"{NAMESPACE}/echo"]
        return str(row["reason"])

    lab.cordon("node2")
    assert reason() == "noLocalReadyEndpoint", "a cordon is no reason"
    assert reason("--withdraw-on-cordon") == "nodeCordoned", "unless the agents are told so"
    lab.drain("node2")
    assert reason() == "nodeDraining"
    lab.drain("node2", False)


def test_check_passes_on_a_healthy_node(lab: Lab) -> None:
    code, results = check_json(lab, "node1")
    assert code == 0, results
    assert set(results) == {
        "api",
        "permissions",
        "node",
        "prefixes",
        "pools",
        "interface",
        "netlink",
        "frr",
        "other-lb",
        "takeover",
        "arp",
    }
    assert all(statuses(r) <= {"ok", "warn"} for r in results.values()), results
    (takeover,) = results["takeover"]  # other tests' class-less Services may be counted too
    assert takeover["message"].endswith(
        "Service(s) of ours: status written by l3lb or by nobody, every IP kept"
    )
    (pools,) = results["pools"]
    assert pools["status"] == "ok" and "as the allocator's (node" in pools["message"], pools
    # the agent identity may not list pods: the ServiceLB look-up says so instead of guessing
    assert statuses(results["other-lb"]) == {"warn"}
    text = lab.l3lb("node1", "check")
    assert text.returncode == 0 and "fail" not in text.stdout.split()
    assert text.stdout.splitlines()[0].startswith("ok    api")


def assert_fails(results: dict[str, list[dict]], check: str, *words: str) -> None:
    failing = [r for r in results[check] if r["status"] == "fail"]
    assert failing, results[check]
    assert failing[0]["fix"], "every failure comes with a fix"
    for word in words:
        assert any(word in r["message"] for r in failing), failing


@pytest.mark.parametrize(
    ("check", "args", "words"),
    [
        ("node", ("--node-name", "no-such-node"), ("no Node named",)),
        ("prefixes", ("--prefix", "10.96.0.0/24"), ("overlaps the service network",)),
        ("interface", ("--interface", "nope0"), ("does not exist",)),
        ("frr", ("--prefix", "10.0.200.0/24"), ("lacks a prefix-list entry 'permit 10.0.200.0/24 ge 32'",)),
        ("frr", ("--vty-socket", "/nonexistent"), ("does not answer",)),
    ],
)
def test_each_failing_check(lab: Lab, check: str, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    code, results = check_json(lab, "node1", *args)
    assert code == 1
    assert_fails(results, check, *words)
    text = lab.l3lb("node1", "check", *args)
    assert text.returncode == 1 and "fix: " in text.stdout


def test_check_fails_without_the_api_or_permissions(lab: Lab, control_plane: ControlPlane, tmp_path) -> None:
    nobody = control_plane.identity("nobody-at-all", ["example:unbound"])
    code, results = check_json(lab, "node1", "--kubeconfig", str(nobody))
    assert code == 1
    assert_fails(results, "permissions", "may not list services")
    broken = tmp_path / "broken.kubeconfig"
    broken.write_text(lab.kubeconfig.read_text().replace(f":{control_plane.state.apiserver_port}", ":1"))
    code, results = check_json(lab, "node1", "--kubeconfig", str(broken))
    assert code == 1
    assert_fails(results, "api", "cannot reach the apiserver")
    assert statuses(results["permissions"]) == {"skip"}


def test_check_fails_without_net_admin_and_without_arp_sysctls(lab: Lab) -> None:
    node = lab.node("node2")
    argv = [
        sys.executable,
        "-m",
        "l3lb",
        "check",
        "-o",
        "json",
        "--prefix",
        "10.0.100.0/24",
        "--node-name",
        "node2",
        "--kubeconfig",
        str(lab.kubeconfig),
        "--vty-socket",
        str(node.frr.dir),
    ]
    out = node.ns.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *argv], check=False)
    results: dict[str, list[dict]] = {}
    for r in json.loads(out.stdout):
        results.setdefault(r["check"], []).append(r)
    assert out.returncode == 1
    assert_fails(results, "netlink", "no CAP_NET_ADMIN")
    assert_fails(results, "arp", "arp_ignore=0")


def test_check_finds_other_load_balancers(
    lab: Lab, api: client.ApiClient, core: client.CoreV1Api, control_plane: ControlPlane
) -> None:
    ext = client.ApiextensionsV1Api(api)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ipaddresspools.metallb.io"},
        "spec": {
            "group": "metallb.io",
            "scope": "Namespaced",
            "names": {"plural": "ipaddresspools", "singular": "ipaddresspool", "kind": "IPAddressPool"},
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    core.create_namespaced_pod(
        NAMESPACE,
        {
            "metadata": {
                "name": "svclb-echo-abcde",
                "labels": {"svccontroller.k3s.cattle.io/svcname": "echo"},
            },
            "spec": {"containers": [{"name": "lb", "image": "x"}]},
        },
    )
    try:
        admin = str(control_plane.admin_kubeconfig)

        def metallb_seen() -> dict | None:
            results = check_json(lab, "node1", "--kubeconfig", admin)[1]
            return results if any("MetalLB" in r["message"] for r in results["other-lb"]) else None

        results = wait_for(metallb_seen, timeout=30, interval=1, what="MetalLB in API discovery")
        assert_fails(results, "other-lb", "MetalLB is installed", "k3s ServiceLB is active (svclb-echo-abcde")
        # ServiceLB's DaemonSet, as k3s' servicelb.go labels it (no DaemonSet controller runs here)
        client.AppsV1Api(api).create_namespaced_daemon_set(NAMESPACE, SVCLB_DAEMONSET)
        results = check_json(lab, "node1", "--kubeconfig", admin)[1]
        assert_fails(results, "other-lb", "k3s ServiceLB is enabled: its DaemonSets lab/svclb-echo-0123abcd")
    finally:
        ext.delete_custom_resource_definition("ipaddresspools.metallb.io")
        core.delete_namespaced_pod("svclb-echo-abcde", NAMESPACE, grace_period_seconds=0)
        with contextlib.suppress(client.ApiException):
            client.AppsV1Api(api).delete_namespaced_daemon_set("svclb-echo-0123abcd", NAMESPACE)


SVCLB_DAEMONSET = {
    "metadata": {
        "name": "svclb-echo-0123abcd",
        "labels": {
            "svccontroller.k3s.cattle.io/svcname": "echo",
            "svccontroller.k3s.cattle.io/svcnamespace": NAMESPACE,
            "svccontroller.k3s.cattle.io/nodeselector": "false",
        },
    },
    "spec": {
        "selector": {"matchLabels": {"app": "svclb-echo-0123abcd"}},
        "template": {
            "metadata": {"labels": {"app": "svclb-echo-0123abcd"}},
            "spec": {"containers": [{"name": "lb-tcp-80", "image": "rancher/klipper-lb:v0.4.9"}]},
        },
    },
}


def test_check_finds_a_redistribution_that_lets_out_more(lab: Lab) -> None:
    """On a real FRR: an entry ahead of l3lb's in its route-map that permits a wider prefix-list (as one
    written for another load balancer's VIPs would), read back from FRR's own running config."""
    frr = lab.node("node1").frr
    frr.vtysh(
        "configure terminal",
        "ip prefix-list WIDE seq 5 permit 10.0.0.0/8 ge 32",
        "route-map L3LB-V4 permit 5",
        "match ip address prefix-list WIDE",
    )
    try:
        code, results = check_json(lab, "node1")
        assert code == 1
        assert_fails(
            results,
            "frr",
            "'redistribute connected' under address-family ipv4 unicast through route-map L3LB-V4: entry 5 "
            "matches prefix-list WIDE, which permits 10.0.0.0/8, outside l3lb's prefixes",
        )
    finally:
        frr.vtysh("configure terminal", "no route-map L3LB-V4 permit 5", "no ip prefix-list WIDE")
    code, results = check_json(lab, "node1")
    assert statuses(results["frr"]) <= {"ok", "warn"}, results["frr"]


def test_check_finds_another_controllers_status_and_what_would_move(lab: Lab, core: client.CoreV1Api) -> None:
    """Services of a class the lab's agents do not serve, checked as if they were ours: status that MetalLB
    wrote, one that would move, and annotations l3lb reads otherwise."""
    other = "example.com/other"
    names = ["metallb-kept", "metallb-moves", "kube-vip-host"]
    for name in names:
        create_lb_service(
            core,
            NAMESPACE,
            name,
            selector={"app": name},
            policy="Cluster",
            lb_class=other,
            annotations={"kube-vip.io/loadbalancerIPs": "lb.example.com"} if name == "kube-vip-host" else {},
        )
    try:
        api = Api(core.api_client)
        for name, ip in (("metallb-kept", "10.0.100.50"), ("metallb-moves", "192.0.2.50")):
            api.merge_patch(
                f"/api/v1/namespaces/{NAMESPACE}/services/{name}/status",
                {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
                query={"fieldManager": "controller"},
            )
        code, results = check_json(lab, "node1", "--load-balancer-class", other, "--no-default-class")
        assert code == 1
        assert_fails(
            results,
            "takeover",
            "status.loadBalancer of 2 Service(s) of ours was written by controller (MetalLB's controller",
            "lab/metallb-moves would move from 192.0.2.50 to 10.0.100.",  # .1 or .2: oldest first
        )
        (warning,) = results["annotations"]
        assert (
            warning["status"] == "warn"
            and "lab/kube-vip-host: kube-vip.io/loadbalancerIPs" in warning["message"]
        )
    finally:
        for name in names:
            core.delete_namespaced_service(name, NAMESPACE)
