"""Taking over from another load balancer on the real control plane: Services that carry MetalLB's
annotations and whose status another field manager wrote keep their IPs, and the leader then owns that
status (managedFields)."""

from __future__ import annotations

import pytest
from agents import Lab, wait_addresses
from kubelet import create_pod, wait_for, write_status_as
from kubernetes import client
from test_allocation import events, wait_ingress

from l3lb.k8s.api import Api

pytestmark = [pytest.mark.root, pytest.mark.cluster]
APP = {"app": "web"}
METALLB = "controller"
"""The field manager MetalLB's controller writes status under: it sets none, so the apiserver takes the
User-Agent's first word, its binary's name (tests/support/kubelet.py write_status_as)."""


def status_managers(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    """manager -> operation, for the entries of the status subresource that own status.loadBalancer."""
    svc = Api(core.api_client).get_json(f"/api/v1/namespaces/{namespace}/services/{name}")
    return {
        m["manager"]: m["operation"]
        for m in svc["metadata"].get("managedFields") or []
        if m.get("subresource") == "status" and "f:loadBalancer" in m.get("fieldsV1", {}).get("f:status", {})
    }


def test_status_another_controller_wrote_is_kept_and_then_ours(lab: Lab) -> None:
    ip = lab.ip
    # Before l3lb runs: MetalLB's annotations, and MetalLB's controller wrote status.
    lab.service("requested", annotations={"metallb.io/loadBalancerIPs": ip(20)})
    lab.service("allocated")  # MetalLB picked .21 from its pool
    share = {"metallb.universe.tf/allow-shared-ip": "web"}
    lab.service("http", annotations=share, port=80)
    lab.service("https", annotations=share, port=443)
    lab.service("elsewhere")  # an IP outside l3lb's prefixes (k3s ServiceLB's node IP, say)
    for name, ips in (
        ("requested", [ip(20)]),
        ("allocated", [ip(21)]),
        ("http", [ip(22)]),
        ("https", [ip(22)]),
        ("elsewhere", ["192.0.2.50"]),
    ):
        write_status_as(lab.core, lab.namespace, name, ips, METALLB)
    a = lab.node("a")
    b = lab.node("b")
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)

    got = wait_ingress(lab, lambda g: g["elsewhere"] and g["elsewhere"][0] != "192.0.2.50", "elsewhere moved")
    assert {k: got[k] for k in ("requested", "allocated", "http", "https")} == {
        "requested": (ip(20),),
        "allocated": (ip(21),),
        "http": (ip(22),),
        "https": (ip(22),),
    }, "no renumbering"
    assert got["elsewhere"] == (ip(1),), "outside every pool: allocated as before"
    for name in ("requested", "allocated", "http", "https"):
        wait_for(
            lambda n=name: f"l3lb/{lab.namespace}" in status_managers(lab.core, lab.namespace, n),
            what=f"the leader to own {name}'s status",
        )
        managers = status_managers(lab.core, lab.namespace, name)
        assert managers[f"l3lb/{lab.namespace}"] == "Apply" and managers[METALLB] == "Update", managers
    taken = {e.involved_object.name: e.message for e in events(lab.core, lab.namespace, "TakenOver")}
    assert taken["allocated"] == f"kept {ip(21)}, which {METALLB} wrote in status; l3lb owns it now"
    assert set(taken) == {"requested", "allocated", "http", "https"}
    for node in (a, b):
        wait_addresses(node, {ip(1), ip(20), ip(21), ip(22)})
    assert not events(lab.core, lab.namespace, "IPInUse"), "MetalLB's sharing is l3lb's"

    # The taken-over status is handled as what l3lb wrote: a changed request moves it, once.
    lab.core.patch_namespaced_service(
        "allocated", lab.namespace, {"metadata": {"annotations": {"l3lb.io/load-balancer-ips": ip(30)}}}
    )
    wait_ingress(lab, lambda g: g["allocated"] == (ip(30),), "allocated moved to what l3lb's annotation asks")
    for node in (a, b):
        wait_addresses(node, {ip(1), ip(20), ip(30), ip(22)})


def test_a_dry_run_beside_the_old_controller_says_what_it_would_do(lab: Lab) -> None:
    """``l3lb run --dry-run`` decides as the leader would and logs it; nothing is written, nothing is
    put on the interface."""
    ip = lab.ip
    lab.service("kept", annotations={"metallb.universe.tf/loadBalancerIPs": ip(20)})
    lab.service("moved")
    write_status_as(lab.core, lab.namespace, "kept", [ip(20)], METALLB)
    write_status_as(lab.core, lab.namespace, "moved", ["192.0.2.50"], METALLB)
    a = lab.node("a", args=("--address-lifetime", "30", "--dry-run"))
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    wait_for(
        lambda: f"dry run: would write status of {lab.namespace}/moved: {ip(1)}" in a.log(),
        what="the dry run's allocation",
    )
    assert f"dry run: would take over status of {lab.namespace}/kept as it is: {ip(20)}" in a.log()
    assert a.log().count(f"would write status of {lab.namespace}/moved") == 1, "said once"
    assert wait_ingress(lab, lambda g: True, "status") == {"kept": (ip(20),), "moved": ("192.0.2.50",)}
    assert status_managers(lab.core, lab.namespace, "kept") == {METALLB: "Update"}
    assert a.addresses() == set(), "a dry run touches no interface"
