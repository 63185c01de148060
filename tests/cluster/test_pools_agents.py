"""Named pools with real agents and the real control plane: which pool a Service's IP comes from, Warning
Events for what cannot be served, node selectors, and a pool removed from the configuration."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from agents import Lab, SimNode, status_all_argv, wait_addresses
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
    argv = status_all_argv(a, lab, "--config", str(config))
    out = a.ns.run([*argv, "-o", "json"])
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
    text = a.ns.run(argv).stdout
    line = next(x for x in text.splitlines() if "/public " in x)
    assert line.split()[1:3] == ["edge", lab.ip(1)] and f"{a.name} (nodeNotSelected)" in line, text


def test_a_removed_or_renamed_pool_keeps_its_services_ips_with_a_warning(lab: Lab) -> None:
    config = write(lab.workdir / "pools.json", pools(lab))
    a = lab.node("a", labels={EDGE: "true"}, config=config)
    a.wait_synced()
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels=APP)
    ip = lab.ip
    lab.service("public", annotations={"l3lb.io/address-pool": "edge"})
    lab.service("asked", ips=ip(2))
    lab.service("plain")
    wait_ingress(lab, lambda g: g["public"] == (ip(1),) and g["asked"] == (ip(2),), "edge allocated")
    wait_ingress(lab, lambda g: g["plain"] == (ip(65),), "internal allocated")
    lab.service("named", annotations={"l3lb.io/address-pool": "internal"})
    wait_ingress(lab, lambda g: g["named"] == (ip(66),), "named allocated")
    wait_addresses(a, {ip(1), ip(2), ip(65), ip(66)})

    # The operator drops the edge pool, renames internal to private, and restarts the agent.
    renamed = [dict(p, name="private") if p["name"] == "internal" else p for p in pools(lab, edge=False)]
    write(config, renamed)
    a.signal(signal.SIGTERM)
    a.start()
    a.wait_synced()
    # The removed pool's IPs are outside every prefix now: never on the interface. The renamed pool's are
    # still ours and stay announced.
    wait_addresses(a, {ip(65), ip(66)})
    wait_for(lambda: len(events(lab.core, lab.namespace, "UnknownPool")) == 2, what="UnknownPool twice")
    wait_for(lambda: events(lab.core, lab.namespace, "IPOutsidePool"), what="IPOutsidePool for asked")
    mark = a.mark()
    lab.service("later")  # a run of the allocator after the warnings
    wait_ingress(lab, lambda g: g["later"] == (ip(67),), "later allocated")
    a.wait_handled("later", since=mark, by="allocator")
    got = wait_ingress(lab, lambda g: True, "status")
    assert {k: got[k] for k in ("public", "asked", "plain", "named")} == {
        "public": (ip(1),),
        "asked": (ip(2),),
        "plain": (ip(65),),
        "named": (ip(66),),
    }, "kept until the operator acts"
    warnings = {e.involved_object.name: e.message for e in events(lab.core, lab.namespace, "UnknownPool")}
    assert "names pool 'edge', which is not configured (pools: private, elsewhere)" in warnings["public"]
    assert "names pool 'internal'" in warnings["named"]
    outside = events(lab.core, lab.namespace, "IPOutsidePool")
    assert [e.involved_object.name for e in outside] == ["asked"], "the others have UnknownPool"
    assert "announced by no node" in outside[0].message

    # The operator acts: the annotation names the renamed pool; nothing moves, the warning stops.
    lab.core.patch_namespaced_service(
        "named", lab.namespace, {"metadata": {"annotations": {"l3lb.io/address-pool": "private"}}}
    )
    mark = a.mark()
    lab.service("after")
    wait_ingress(lab, lambda g: g["after"] == (ip(68),), "after allocated")
    a.wait_handled("after", since=mark, by="allocator")
    assert wait_ingress(lab, lambda g: True, "status")["named"] == (ip(66),)


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
