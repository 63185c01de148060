"""The Services' conditions (l3lb.io/Allocated, l3lb.io/Announced) with real agents and the real control
plane: they follow pod readiness, node exclusion and pool node selectors, say each refusal, agree with
``l3lb status --all``, leave other controllers' conditions alone, and are written only when their text
changes (a watch on the Services counts every write), a change of leader included; and what kubectl shows."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import urllib3
from agents import Lab, SimNode, status_all_argv
from kubelet import create_pod, lease_holder, set_node_label, set_pod_ready, wait_for
from kubernetes.watch.watch import iter_resp_lines
from test_allocation import ingress
from testenv import ControlPlane, binaries

from l3lb.conditions.compose import ALLOCATED, ANNOUNCED, announced
from l3lb.k8s.api import Api
from l3lb.model import parse_service
from l3lb.node.cluster import Announcement

pytestmark = [pytest.mark.root, pytest.mark.cluster]
APP = {"app": "web"}
EDGE = "l3lb.io/test-edge"
EXCLUDE = "node.kubernetes.io/exclude-from-external-load-balancers"


def conditions(lab: Lab, name: str) -> dict[str, dict[str, Any]]:
    svc = Api(lab.core.api_client).get_json(f"/api/v1/namespaces/{lab.namespace}/services/{name}")
    return {c["type"]: c for c in (svc.get("status") or {}).get("conditions") or []}


def wait_condition(lab: Lab, name: str, kind: str, status: str, reason: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = conditions(lab, name).get(kind)
        return c if c and c["status"] == status and reason in (None, c["reason"]) else None

    return wait_for(check, timeout=20, interval=0.2, what=f"{name}: {kind} {status} {reason or ''}")


def groups(message: str) -> dict[str, str]:
    """The nodes an Announced message names: node -> "announced" or the reason it does not."""
    out = {}
    first, _, rest = message.partition("; ")
    if first.startswith("announced by no node: "):
        rest = first.removeprefix("announced by no node: ")
    else:
        for n in first.removeprefix("announced by ").split(", "):
            out[n] = "announced"
        rest = rest.removeprefix("not by ").partition("; ")[0] if rest.startswith("not by ") else ""
    for names, why in re.findall(r"(.+?) \((\w+)\)(?:, |$)", rest):
        for n in names.split(", "):
            out[n] = why
    return out


def write_pools(lab: Lab) -> Path:
    base = lab.prefix.rsplit(".", 1)[0]
    doc = {
        "pools": [
            {
                "name": "small",  # two addresses: .1 and .2
                "prefixes": [f"{base}.0/30"],
                "serviceSelector": {
                    "matchExpressions": [{"key": "exposure", "operator": "NotIn", "values": ["internet"]}]
                },
            },
            {
                "name": "edge",
                "prefixes": [f"{base}.64/26"],
                "autoAssign": False,
                "nodeSelector": {"matchLabels": {EDGE: "true"}},
            },
        ]
    }
    path = lab.workdir / "pools.json"
    path.write_text(json.dumps(doc))
    return path


def status_all(node: SimNode, lab: Lab, *args: str) -> dict[str, dict[str, Any]]:
    out = node.ns.run([*status_all_argv(node, lab, *args), "-o", "json"])
    return {r["service"].split("/")[1]: r for r in json.loads(out.stdout)["services"]}


def test_conditions_follow_readiness_exclusion_selectors_and_say_each_refusal(lab: Lab) -> None:
    config = write_pools(lab)
    a = lab.node("a", labels={EDGE: "true"}, config=config)
    b = lab.node("b", config=config)
    wait_for(lambda: lease_holder(lab.core, lab.namespace), what="a leader")
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    ip = lab.ip
    lab.service("web", policy="Local")
    lab.service("cluster")
    wait_condition(lab, "web", ALLOCATED, "True")
    wait_condition(lab, "cluster", ALLOCATED, "True")
    lab.service("third")  # small has no address left; edge is not auto-assign
    lab.service("public", annotations={"l3lb.io/address-pool": "edge"})
    lab.service("exposed", labels={"exposure": "internet"})
    lab.service("typo", annotations={"l3lb.io/address-pool": "egde"})
    lab.service("outside", ips="10.200.0.1")

    (web_ip,) = ingress(lab.core, lab.namespace)["web"]
    assert (
        wait_condition(lab, "web", ALLOCATED, "True", "Allocated")["message"] == f"{web_ip} from pool small"
    )
    assert wait_condition(lab, "public", ALLOCATED, "True")["message"] == f"{ip(65)} from pool edge"
    refused = {
        "third": "PoolExhausted",
        "exposed": "NoPoolAllowed",
        "typo": "UnknownPool",
        "outside": "IPOutsidePool",
    }
    for name, reason in refused.items():
        c = wait_condition(lab, name, ALLOCATED, "False", reason)
        assert c["lastTransitionTime"] and "observedGeneration" not in c, "Services have no generation"
        assert wait_condition(lab, name, ANNOUNCED, "False", "NoIngressIP")
    assert "no free IPv4 address left in small" in conditions(lab, "third")[ALLOCATED]["message"]
    assert "names pool 'egde', which is not configured" in conditions(lab, "typo")[ALLOCATED]["message"]

    # Where each is announced, as the agents decide: web only where its pod is, public only on edge nodes.
    c = wait_condition(lab, "web", ANNOUNCED, "True", "LocalReadyEndpoints")
    assert (
        groups(c["message"])[a.name] == "announced" and groups(c["message"])[b.name] == "noLocalReadyEndpoint"
    )
    assert c["message"].endswith(
        "as the agents decide from the API, not read from the nodes (l3lb status shows what a node holds)"
    )
    c = wait_condition(lab, "public", ANNOUNCED, "True", "ReadyEndpoints")
    assert groups(c["message"])[b.name] == "nodeNotSelected"
    c = wait_condition(lab, "cluster", ANNOUNCED, "True", "ReadyEndpoints")
    assert {groups(c["message"])[n] for n in (a.name, b.name)} == {"announced"}

    # Pod readiness.
    set_pod_ready(lab.core, lab.namespace, "web-1", False)
    wait_condition(lab, "web", ANNOUNCED, "False", "NoLocalReadyEndpoint")
    c = wait_condition(lab, "cluster", ANNOUNCED, "False", "NoReadyEndpoint")
    assert c["message"].startswith("announced by no node: ")
    set_pod_ready(lab.core, lab.namespace, "web-1", True)
    wait_condition(lab, "web", ANNOUNCED, "True")

    # Node exclusion: a's agent withdraws, and the condition says why; the Service's own reason comes first.
    set_node_label(lab.core, a.name, EXCLUDE, "")
    c = wait_condition(lab, "web", ANNOUNCED, "False", "NoLocalReadyEndpoint")
    assert groups(c["message"])[a.name] == "nodeExcluded"
    c = wait_condition(lab, "cluster", ANNOUNCED, "True")
    assert groups(c["message"])[a.name] == "nodeExcluded" and groups(c["message"])[b.name] == "announced"

    # Pool node selectors: b becomes an edge node, a stays excluded.
    set_node_label(lab.core, b.name, EDGE, "true")
    c = wait_for(
        lambda: (
            (x := conditions(lab, "public")[ANNOUNCED])
            and groups(x["message"]).get(b.name) == "announced"
            and x
        ),
        what="public announced by b",
    )
    assert groups(c["message"])[a.name] == "nodeExcluded"

    # l3lb status --all, from one list of everything with each node's own Tracker, says the same.
    differ: dict[str, Any] = {}

    def agree() -> bool:
        differ.clear()
        for name, row in status_all(a, lab, "--config", str(config)).items():
            got = conditions(lab, name)[ANNOUNCED]
            nodes = [(n, "", True) for n in row["announced_by"]]
            nodes += [(n, why, False) for n, why in row["not_by"].items()]
            want = announced(parse_service({}), Announcement(tuple(sorted(nodes)), (), frozenset()))
            if (got["status"], got["message"]) != (want.status, want.message):
                differ[name] = (got["message"], want.message)
        return not differ

    wait_for(agree, timeout=10, interval=0.5, what="l3lb status --all and the conditions to agree")
    assert differ == {}


class ServiceWrites:
    """Every change the apiserver makes to the test's Services, from a watch of them: (name, conditions)."""

    def __init__(self, lab: Lab) -> None:
        self.api = Api(lab.core.api_client)
        url = f"/api/v1/namespaces/{lab.namespace}/services"
        rv = self.api.get_json(url)["metadata"]["resourceVersion"]
        query = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": 300}
        self.resp = self.api.request("GET", url, query=query, timeout=(5, 320))
        self.seen: list[tuple[str, dict[str, Any]]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(urllib3.exceptions.ProtocolError):  # closed at the end
            for line in iter_resp_lines(self.resp):
                obj = json.loads(line)["object"]
                conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
                self.seen.append((obj["metadata"]["name"], conds))

    def close(self) -> None:
        self.resp.shutdown()


def test_only_changed_conditions_are_written_others_conditions_stay_and_a_new_leader_rewrites_nothing(
    lab: Lab,
) -> None:
    a, b = lab.node("a"), lab.node("b")
    leader = wait_for(lambda: lease_holder(lab.core, lab.namespace), what="a leader")
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    names = [f"s{i}" for i in range(5)]
    for name in names:
        lab.service(name)
    for name in names:
        wait_condition(lab, name, ANNOUNCED, "True")
    writes = ServiceWrites(lab)
    try:
        # Another controller's condition on s1 (a strategic merge patch, as a client would): ours stay,
        # and the keeper writes nothing for that change.
        first = next(n for n in (a, b) if n.name == leader)
        mark = first.mark()
        theirs = {
            "type": "example.com/Checked",
            "status": "True",
            "reason": "Probe",
            "message": "fine",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        Api(lab.core.api_client).strategic_merge_patch(
            f"/api/v1/namespaces/{lab.namespace}/services/s1/status", {"status": {"conditions": [theirs]}}
        )
        first.wait_handled(f"services {lab.namespace}/s1", since=mark, by="keeper")
        # A second ready endpoint on a: every slice changes, no condition text does.
        mark = first.mark()
        create_pod(lab.core, lab.namespace, "web-2", a.name, "10.244.0.2", labels=APP)
        for name in names:
            first.wait_handled(f"endpointslices by node SET {lab.namespace}/{name}-", since=mark, by="keeper")
        assert [n for n, _ in writes.seen] == ["s1"], "only the other controller's write"

        # b is excluded: every Service's Announced message changes, each written once; theirs stays.
        set_node_label(lab.core, b.name, EXCLUDE, "")
        for name in names:
            wait_for(
                lambda name=name: (
                    groups(conditions(lab, name)[ANNOUNCED]["message"]).get(b.name) == "nodeExcluded"
                ),
                what=f"{name}: b excluded",
            )
        assert sorted(n for n, _ in writes.seen[1:]) == names
        assert conditions(lab, "s1")["example.com/Checked"]["message"] == "fine"

        # The leader stops, and its conditions worker with it; the other one takes over from the Services as
        # they are and writes nothing.
        count = len(writes.seen)
        worker = int(re.findall(r"started the conditions worker \(pid (\d+)\)", first.log())[-1])
        assert Path(f"/proc/{worker}").exists()
        first.signal(signal.SIGTERM)
        assert not Path(f"/proc/{worker}").exists(), "the worker ended with its agent"
        second = b if first is a else a
        wait_for(
            lambda: "keeping the conditions of" in second.log(),
            timeout=30,
            what="the new leader's first pass",
        )
        line = next(x for x in second.log().splitlines() if "keeping the conditions of" in x)
        assert line.endswith(": 0 to write"), line
        assert writes.seen[count:] == [], "nothing rewritten"
    finally:
        writes.close()


def test_kubectl_shows_the_conditions(lab: Lab, control_plane: ControlPlane) -> None:
    """As users look: kubectl get -o yaml and kubectl wait see them. kubectl describe (1.35) prints no
    Service conditions at all (k8s.io/kubectl pkg/describe describeService), only the Events."""
    a = lab.node("a")
    wait_for(lambda: lease_holder(lab.core, lab.namespace), what="a leader")
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    lab.service("web", policy="Local")
    kubectl = [
        str(binaries()["kubectl"]),
        "--kubeconfig",
        str(control_plane.admin_kubeconfig),
        "-n",
        lab.namespace,
    ]
    subprocess.run(
        [*kubectl, "wait", "--for=condition=l3lb.io/Announced", "service/web", "--timeout=20s"], check=True
    )
    yaml = subprocess.run(
        [*kubectl, "get", "service", "web", "-o", "yaml"], check=True, capture_output=True, text=True
    )
    assert "type: l3lb.io/Allocated" in yaml.stdout and "type: l3lb.io/Announced" in yaml.stdout
    describe = subprocess.run(
        [*kubectl, "describe", "service", "web"], check=True, capture_output=True, text=True
    )
    assert "LoadBalancer Ingress:" in describe.stdout and "Announced" in describe.stdout  # the Events
    assert "l3lb.io/Announced" not in describe.stdout, (
        "kubectl describe shows conditions now: update the README"
    )
