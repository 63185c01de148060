"""Kubernetes API objects as the watches deliver them (plain JSON dicts), built small for unit tests: a
LoadBalancer Service, an EndpointSlice of it, this node's Node."""

from __future__ import annotations


def svc_obj(
    name: str,
    ips: list[str],
    *,
    policy: str = "Local",
    lb_class: str | None = None,
    svc_type: str = "LoadBalancer",
    ns: str = "default",
    ann: str | None = None,
    hold: str | None = None,
) -> dict:
    spec = {"type": svc_type, "externalTrafficPolicy": policy}
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    annotations = {"l3lb.io/load-balancer-ips": ann} if ann is not None else {}
    if hold is not None:
        annotations["l3lb.io/announce-hold-down"] = hold
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}", "annotations": annotations},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


def slice_obj(
    name: str, svc: str, endpoints: list[tuple[str, bool | None, bool]], ns: str = "default"
) -> dict:
    eps = []
    for node, ready, terminating in endpoints:
        cond: dict = {"terminating": terminating}
        if ready is not None:
            cond["ready"] = ready
        eps.append({"addresses": ["10.244.0.1"], "nodeName": node, "conditions": cond})
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "endpoints": eps,
    }


def node_obj(
    *,
    ready: bool = True,
    labels: dict | None = None,
    unschedulable: bool = False,
    taints: list | None = None,
    annotations: dict | None = None,
    deleting: bool = False,
) -> dict:
    meta: dict = {"name": "n1", "labels": labels or {}, "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
