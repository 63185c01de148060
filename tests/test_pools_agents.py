"""Named pools with real agents and the real control plane: which pool a Service's IP comes from, Warning
Events for what cannot be served, node selectors, and a pool removed from the configuration."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from agents import Lab, SimNode, wait_addresses
from kubelet import create_pod, lease_holder, set_node_label, wait_for
from test_allocation import events, wait_ingress

pytestmark = [pytest.mark.root, pytest.mark.cluster]
APP = {"app": "web"}
EDGE = "l3lb.io/test-edge"


def pools(lab: Lab, *, edge: bool = True) -> list[dict]:
    """The test's /24 as three pools: edge (asked for only, announced by edge nodes), internal (not for
    Services labelled exposure=internet) and elsewhere (another namespace only)."""
    base = lab.prefix.rsplit(".", 1)[0]
    out = [
        {
            "name": "internal",
            "prefixes": [f"{base}.64/26"],
            "serviceSelector": {
                "matchExpressions": [{"key": "exposure", "operator": "NotIn", "values": ["internet"]}]
            },
        },
        {"name": "elsewhere", "prefixes": [f"{base}.128/26"], "namespaces": ["some-other-namespace"]},
    ]
    if edge:
        out.insert(
            0,
            {
                "name": "edge",
                "prefixes": [f"{base}.0/26"],
                "autoAssign": False,
                "nodeSelector": {"matchLabels": {EDGE: "true"}},
            },
        )
    return out


def write(path: Path, doc: list[dict]) -> Path:
    path.write_text(json.dumps({"pools": doc}))
    return path


def test_pools_select_services_and_nodes(lab: Lab) -> None:
    config = write(lab.workdir / "pools.json", pools(lab))
    a = lab.node("a", labels={EDGE: "true"}, config=config)
    b = lab.node("b", config=config)
    for n in (a, b):
        n.wait_synced()
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    lab.service("plain")
    lab.service("public", annotations={"l3lb.io/address-pool": "edge"})
    lab.service("exposed", labels={"exposure": "internet"})
    lab.service("typo", annotations={"l3lb.io/address-pool": "egde"})
    ip = lab.ip
    got = wait_ingress(lab, lambda g: g["plain"] and g["public"], "plain and public allocated")
    assert got["plain"] == (ip(65),), "the first auto-assign pool that allows it: internal"
    assert got["public"] == (ip(1),), "the named pool, though not auto-assign"
    wait_for(lambda: events(lab.core, lab.namespace, "NoPoolAllowed"), what="NoPoolAllowed for exposed")
    wait_for(lambda: events(lab.core, lab.namespace, "UnknownPool"), what="UnknownPool for typo")
    (no_pool,) = events(lab.core, lab.namespace, "NoPoolAllowed")
    assert no_pool.involved_object.name == "exposed"
    assert "pool internal selects Services exposure notin (internet)" in no_pool.message
    assert "pool elsewhere allows namespaces some-other-namespace" in no_pool.message
    (unknown,) = events(lab.core, lab.namespace, "UnknownPool")
    assert "names pool 'egde', which is not configured (pools: edge, internal, elsewhere)" in unknown.message
    assert got["exposed"] == () and got["typo"] == ()

    # Only the edge node announces the edge pool's IP; both announce the internal one.
    wait_addresses(a, {ip(65), ip(1)})
    b.wait_handled(f"public [{ip(1)}]")
    wait_addresses(b, {ip(65)})

    # Labels move: b becomes an edge node, then a stops being one and withdraws within a second.
    set_node_label(lab.core, b.name, EDGE, "true")
    wait_addresses(b, {ip(65), ip(1)})
    start = time.monotonic()
    set_node_label(lab.core, a.name, EDGE, None)
    wait_addresses(a, {ip(65)}, timeout=5)
    took = time.monotonic() - start
    assert took < 1.0, f"withdrawn {took:.2f} s after the label changed"

    # The cluster-wide view, from the API alone, with the agents' own decision code.
    out = a.ns.run(
        [
            *a.argv[:3],
            "status",
            "--all",
            "--config",
            str(config),
            "--kubeconfig",
            str(lab.kubeconfig),
            "--load-balancer-class",
            lab.lb_class,
            "--no-default-class",
            "-o",
            "json",
        ]
    )
    rows = {r["service"].split("/")[1]: r for r in json.loads(out.stdout)["services"]}
    ours = {a.name, b.name}

    def view(name: str) -> tuple[str, list[str], dict[str, str]]:
        r = rows[name]
        return (
            r["pool"],
            [n for n in r["announced_by"] if n in ours],
            {n: why for n, why in r["not_by"].items() if n in ours},
        )

    assert view("public") == ("edge", [b.name], {a.name: "nodeNotSelected"})
    assert view("plain") == ("internal", [a.name, b.name], {})
    assert view("exposed") == ("-", [], {a.name: "noIngressIP", b.name: "noIngressIP"})
    text = a.ns.run([arg for arg in out.args[4:] if arg not in ("-o", "json")]).stdout
    line = next(x for x in text.splitlines() if "/public " in x)
    assert line.split()[1:3] == ["edge", lab.ip(1)] and f"{a.name} (nodeNotSelected)" in line, text


def test_a_removed_pool_keeps_its_services_ips_with_a_warning(lab: Lab) -> None:
    config = write(lab.workdir / "pools.json", pools(lab))
    a = lab.node("a", labels={EDGE: "true"}, config=config)
    a.wait_synced()
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    lab.service("public", annotations={"l3lb.io/address-pool": "edge"})
    lab.service("plain")
    ip = lab.ip
    wait_ingress(lab, lambda g: g["public"] == (ip(1),) and g["plain"] == (ip(65),), "allocated")
    wait_addresses(a, {ip(1), ip(65)})

    # The operator drops the edge pool and restarts the agent with the new file.
    write(config, pools(lab, edge=False))
    a.signal(signal.SIGTERM)
    a.start()
    a.wait_synced()
    wait_addresses(a, {ip(65)})  # outside every prefix now: never on the interface
    wait_for(lambda: events(lab.core, lab.namespace, "UnknownPool"), what="UnknownPool for public")
    mark = a.mark()
    lab.service("later")  # a run of the allocator after the warning
    wait_ingress(lab, lambda g: g["later"] == (ip(66),), "later allocated")
    a.wait_handled("later", since=mark, by="allocator")
    got = wait_ingress(lab, lambda g: True, "status")
    assert got["public"] == (ip(1),), "kept in status until the operator acts"
    (warning,) = events(lab.core, lab.namespace, "UnknownPool")
    assert "it keeps the IPs it has and gets no new one" in warning.message


def test_an_agent_whose_pools_differ_from_the_allocators_says_so(lab: Lab) -> None:
    full = write(lab.workdir / "pools.json", pools(lab))
    fewer = write(lab.workdir / "fewer.json", pools(lab, edge=False))
    a = lab.node("a", config=full)
    wait_for(lambda: lease_holder(lab.core, lab.namespace) == a.name, what="a leads")
    b = lab.node("b", config=fewer)

    def mismatch_events() -> list:
        return [
            e
            for e in lab.core.list_namespaced_event("default").items
            if e.reason == "PoolsMismatch" and e.involved_object.name == b.name
        ]

    (event,) = wait_for(mismatch_events, what="a PoolsMismatch Event on b's Node")
    assert event.involved_object.kind == "Node" and event.type == "Warning"
    assert f"the elected allocator ({a.name}) runs pools with fingerprint" in event.message
    assert b.metrics()["l3lb_pools_mismatch"] == 1 and a.metrics()["l3lb_pools_mismatch"] == 0
    assert b.log().count("PoolsMismatch") == 0 and b.log().count("the elected allocator") == 1, "said once"

    def pools_check(node: SimNode, config: Path) -> dict:
        out = node.ns.run(
            [
                *node.argv[:3],
                "check",
                "--config",
                str(config),
                "--node-name",
                node.name,
                "--kubeconfig",
                str(lab.kubeconfig),
                "--lease-namespace",
                lab.namespace,
                "-o",
                "json",
            ],
            check=False,
        )
        assert out.stdout, out.stderr
        return next(r for r in json.loads(out.stdout) if r["check"] == "pools")

    assert pools_check(b, fewer)["status"] == "fail"
    assert "give every agent the same --config file" in pools_check(b, fewer)["fix"]
    assert pools_check(a, full)["status"] == "ok"
