"""Playing the kubelet: Nodes and Pods whose status the tests set, so that the real EndpointSlice
controller publishes endpoints from them.

All helpers take a ``kubernetes.client.CoreV1Api`` and work with plain dicts (strategic merge patches).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool) -> dict[str, str]:
    status = "True" if ok else "False"
    return {"type": kind, "status": status, "lastTransitionTime": _now(), "reason": f"Test{kind}{status}"}


def create_node(
    core: client.CoreV1Api, name: str, *, ready: bool = True, labels: dict[str, str] | None = None
) -> None:
    """Creates a Node and sets its Ready condition."""
    core.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        }
    )
    set_node_ready(core, name, ready)


def set_node_ready(core: client.CoreV1Api, name: str, ready: bool) -> None:
    core.patch_node_status(name, {"status": {"conditions": [_condition("Ready", ready)]}})


def cordon(core: client.CoreV1Api, name: str, cordoned: bool = True) -> None:
    core.patch_node(name, {"spec": {"unschedulable": cordoned}})


def set_node_taints(core: client.CoreV1Api, name: str, taints: list[dict[str, str]]) -> None:
    core.patch_node(name, {"spec": {"taints": taints}})


def set_node_label(core: client.CoreV1Api, name: str, key: str, value: str | None) -> None:
    core.patch_node(name, {"metadata": {"labels": {key: value}}})


def set_node_annotation(core: client.CoreV1Api, name: str, key: str, value: str | None) -> None:
    """``kubectl annotate node NAME KEY=VALUE`` (None: ``KEY-``)."""
    core.patch_node(name, {"metadata": {"annotations": {key: value}}})


def create_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    node: str,
    ip: str,
    *,
    labels: dict[str, str],
    ready: bool = True,
    port: int = 8080,
) -> None:
    """Creates a Pod bound to ``node`` and makes it Running with ``ip``, Ready or not."""
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [
                    {
                        "name": "app",
                        "image": "test.local/app:never-pulled",
                        "ports": [{"containerPort": port, "protocol": "TCP"}],
                    }
                ],
            },
        },
    )
    set_pod_ready(core, namespace, name, ready, ip=ip)


def set_pod_ready(
    core: client.CoreV1Api, namespace: str, name: str, ready: bool, *, ip: str | None = None
) -> None:
    """Patches pod status as a kubelet would: phase Running, pod IPs (``ip``: one, or "v4,v6" for a
    dual-stack pod), Ready and ContainersReady."""
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [_condition("Ready", ready), _condition("ContainersReady", ready)],
    }
    if ip is not None:
        ips = ip.split(",")
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": i} for i in ips]
    core.patch_namespaced_pod_status(name, namespace, {"status": status})


def terminate_pod(core: client.CoreV1Api, namespace: str, name: str, grace: int = 30) -> None:
    """Starts a graceful delete. With no kubelet to finish it, the pod stays terminating."""
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)


def delete_pod_now(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def create_lb_service(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    *,
    selector: dict[str, str],
    policy: str = "Local",
    lb_class: str | None = None,
    ips: str | None = None,
    port: int = 80,
    target_port: int = 8080,
    annotations: dict[str, str] | None = None,
    service_type: str = "LoadBalancer",
    families: list[str] | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Creates a Service; ``ips`` goes into the ``l3lb.io/load-balancer-ips`` annotation; ``families``
    (e.g. ["IPv4", "IPv6"]) makes it dual-stack (RequireDualStack)."""
    ann = dict(annotations or {})
    if ips is not None:
        ann["l3lb.io/load-balancer-ips"] = ips
    spec: dict[str, Any] = {
        "type": service_type,
        "selector": selector,
        "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
    }
    if families:
        spec["ipFamilies"] = families
        spec["ipFamilyPolicy"] = "RequireDualStack" if len(families) > 1 else "SingleStack"
    if service_type == "LoadBalancer":
        spec["externalTrafficPolicy"] = policy
    if lb_class is not None:
        spec["loadBalancerClass"] = lb_class
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "annotations": ann, "labels": labels or {}},
            "spec": spec,
        },
    )


def wait_for(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Polls ``check`` until it returns something truthy; returns it, or fails with ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value {last!r}")


def grant_leases(rbac: client.RbacAuthorizationV1Api, namespace: str, group: str = "l3lb:agents") -> None:
    """Lets ``group`` elect an allocator leader with a Lease in ``namespace`` (as deploy/rbac.yaml does in
    kube-system), so tests can keep their elections apart."""
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "l3lb-allocator"},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "l3lb-allocator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "l3lb-allocator"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": group}],
        },
    )


def lease_holder(core: client.CoreV1Api, namespace: str, name: str = "l3lb-allocator") -> str:
    """Who holds the allocator's Lease in ``namespace``; "" while nobody does."""
    try:
        lease = client.CoordinationV1Api(core.api_client).read_namespaced_lease(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return ""
        raise
    return lease.spec.holder_identity or ""


def write_status_as(
    core: client.CoreV1Api, namespace: str, name: str, ips: list[str], binary: str = "controller"
) -> None:
    """Writes status.loadBalancer.ingress as another load balancer's controller does: an update of the
    status subresource (client-go's UpdateStatus: a PUT) with no field manager, from a client whose
    User-Agent starts with its binary's name, as client-go's default does; the apiserver then records that
    name as the field manager (MetalLB's controller: ``controller``)."""
    from l3lb.k8s.api import Api

    own = client.ApiClient(core.api_client.configuration)
    own.user_agent = f"{binary}/v0.0.0 (linux/amd64) kubernetes/0000000"
    api = Api(own)
    path = f"/api/v1/namespaces/{namespace}/services/{name}"
    svc = api.get_json(path)
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}}
    api.put(f"{path}/status", svc)
