"""Address management with the real control plane and several agents: allocation by one elected leader,
takeover, dual-stack families, sharing, and every kind of bad input reported as a Warning Event."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from agents import Lab, wait_addresses
from kubelet import create_pod, lease_holder, set_pod_ready, wait_for
from kubernetes import client

pytestmark = [pytest.mark.root, pytest.mark.cluster]
APP = {"app": "web"}


def ingress(core: client.CoreV1Api, ns: str) -> dict[str, tuple[str, ...]]:
    return {
        s.metadata.name: tuple(i.ip for i in (s.status.load_balancer.ingress or []))
        for s in core.list_namespaced_service(ns).items
    }


def wait_ingress(lab: Lab, done, what: str, timeout: float = 30.0) -> dict[str, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """Waits until ``done(ingress by Service name)`` holds; returns that map."""

    def check() -> dict[str, tuple[str, ...]] | None:
        got = ingress(lab.core, lab.namespace)
        return got if done(got) else None

    return wait_for(check, timeout=timeout, interval=0.2, what=what)


def events(core: client.CoreV1Api, ns: str, reason: str) -> list:
    return [e for e in core.list_namespaced_event(ns).items if e.reason == reason]


def create_many(lab: Lab, names: list[str]) -> None:
    def one(name: str) -> None:
        lab.service(name)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))


def assert_distinct_in_pool(lab: Lab, got: dict[str, tuple[str, ...]]) -> None:
    ips = [ip for v in got.values() for ip in v]
    assert len(ips) == len(set(ips)), "no duplicates"
    assert all(ip.startswith(lab.prefix.rsplit(".", 1)[0] + ".") for ip in ips)


def test_200_services_at_once_get_distinct_ips_quickly(lab: Lab) -> None:
    for n in ("a", "b", "c"):
        lab.node(n)
    wait_for(lambda: lease_holder(lab.core, lab.namespace), what="a leader")
    names = [f"s{i:03d}" for i in range(200)]
    start = time.monotonic()
    create_many(lab, names)
    got = wait_ingress(lab, lambda g: all(g.get(n) for n in names), "every Service to get an IP", timeout=30)
    elapsed = time.monotonic() - start
    assert_distinct_in_pool(lab, got)
    assert elapsed <= 10, f"200 Services took {elapsed:.1f}s"


def test_leader_killed_mid_burst_another_finishes_without_duplicates(lab: Lab) -> None:
    nodes = {n: lab.node(n) for n in ("a", "b", "c")}
    leader = wait_for(lambda: lease_holder(lab.core, lab.namespace), what="a leader")
    names = [f"k{i:03d}" for i in range(150)]
    burst = threading.Thread(target=create_many, args=(lab, names))
    burst.start()
    time.sleep(0.5)
    killed = next(n for n in nodes.values() if n.name == leader)
    killed.signal(signal.SIGKILL)
    burst.join()
    got = wait_ingress(
        lab, lambda g: all(g.get(n) for n in names), "the new leader to finish the burst", timeout=60
    )
    assert_distinct_in_pool(lab, got)
    assert lease_holder(lab.core, lab.namespace) not in ("", leader)


def test_dual_stack_families(lab: Lab) -> None:
    lab.dual = True
    lab.node("a")
    for name, policy, families in (
        ("v4", "SingleStack", ["IPv4"]),
        ("v6", "SingleStack", ["IPv6"]),
        ("prefer", "PreferDualStack", None),
        ("require", "RequireDualStack", None),
    ):
        body = {
            "metadata": {"name": name},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": lab.lb_class,
                "selector": APP,
                "ipFamilyPolicy": policy,
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        }
        if families:
            body["spec"]["ipFamilies"] = families
        lab.core.create_namespaced_service(lab.namespace, body)
    got = wait_ingress(
        lab, lambda g: len([v for v in g.values() if v]) == 4, "every Service to get its families"
    )
    fams = {name: tuple("IPv6" if ":" in ip else "IPv4" for ip in ips) for name, ips in got.items()}
    assert fams == {"v4": ("IPv4",), "v6": ("IPv6",), "prefer": ("IPv4", "IPv6"), "require": ("IPv4", "IPv6")}


def test_a_family_without_a_pool_is_reported(lab: Lab) -> None:
    lab.node("a")  # IPv4 prefix only
    lab.core.create_namespaced_service(
        lab.namespace,
        {
            "metadata": {"name": "require"},
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": lab.lb_class,
                "selector": APP,
                "ipFamilyPolicy": "RequireDualStack",
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        },
    )
    (ev,) = wait_for(lambda: events(lab.core, lab.namespace, "NoPoolForFamily"), what="NoPoolForFamily")
    assert "IPv6" in ev.message and ev.type == "Warning"


def test_bad_input_gets_warning_events_and_the_older_service_keeps_its_ip(lab: Lab) -> None:
    a = lab.node(
        "a",
        args=(
            "--address-lifetime",
            "30",
            "--reserve",
            lab.ip(0)[:-1] + "128/25",
            "--reserve",
            lab.ip(0)[:-1] + "8/29",
            "--reserve",
            lab.ip(0)[:-1] + "16/28",
            "--reserve",
            lab.ip(0)[:-1] + "32/27",
            "--reserve",
            lab.ip(0)[:-1] + "64/26",
        ),
    )
    # the pool is down to .1 - .7
    lab.service("first", ips=lab.ip(5))
    time.sleep(1.1)  # creationTimestamp has second resolution
    lab.service(
        "second",
        ips=lab.ip(5),
    )
    lab.service("outside", ips="192.0.2.7")
    lab.service("malformed", ips="10.0.0.1,banana")
    lab.service(
        "two",
        ips=f"{lab.ip(6)},{lab.ip(7)}",
    )
    create_many(lab, [f"fill{i}" for i in range(6)])  # 4 addresses left for 6: exhausted
    for reason in (
        "IPInUse",
        "IPOutsidePool",
        "InvalidLoadBalancerIPs",
        "TooManyIPsForFamily",
        "PoolExhausted",
    ):
        wait_for(lambda r=reason: events(lab.core, lab.namespace, r), what=f"a {reason} event")
    assert events(lab.core, lab.namespace, "IPInUse")[0].involved_object.name == "second"
    got = ingress(lab.core, lab.namespace)
    assert got["first"] == (lab.ip(5),) and got["second"] == ()
    assert a.proc is not None and a.proc.poll() is None
    metrics = a.ns.run(
        [
            "python3",
            "-c",
            "import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:9655/metrics').read().decode())",
        ]
    ).stdout
    assert 'l3lb_conflicts_total{reason="IPInUse"} 1.0' in metrics
    assert "l3lb_allocator_leader 1.0" in metrics


def test_another_controller_rewriting_status_is_reported_not_fought(lab: Lab) -> None:
    a = lab.node("a")
    lab.service("contested")
    wait_for(lambda: ingress(lab.core, lab.namespace).get("contested"), what="an allocation")
    stop = threading.Event()

    def rival() -> None:  # like k3s ServiceLB left enabled: it keeps writing its own idea
        while not stop.is_set():
            lab.core.patch_namespaced_service_status(
                "contested",
                lab.namespace,
                {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}},
            )
            stop.wait(0.3)

    thread = threading.Thread(target=rival)
    thread.start()
    try:
        (ev,) = wait_for(
            lambda: events(lab.core, lab.namespace, "StatusConflict"),
            timeout=30,
            what="a StatusConflict event",
        )
        assert "another controller" in ev.message
        stop.set()
        thread.join()
        since = a.mark()
        rival_ip = {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}}}
        lab.core.patch_namespaced_service_status("contested", lab.namespace, rival_ip)  # one more
        a.wait_handled(f"services SET {lab.namespace}/contested [198.51.100.2]", since, by="allocator")
        assert f"writing status of {lab.namespace}/contested" not in a.log()[since:], "l3lb stopped fighting"
        assert ingress(lab.core, lab.namespace)["contested"] == ("198.51.100.2",)
    finally:
        stop.set()
        thread.join()


def test_shared_ip_is_announced_while_any_sharer_wants_it(lab: Lab) -> None:
    a = lab.node("a")
    for name, port, app in (("web", 80, "web"), ("dns", 53, "dns")):
        lab.service(name, selector={"app": app}, port=port, annotations={"l3lb.io/allow-shared-ip": "edge"})
    got = wait_ingress(lab, lambda g: g.get("web") and g.get("dns"), "both Services to get an IP")
    assert got["web"] == got["dns"], got
    ip = got["web"][0]
    create_pod(lab.core, lab.namespace, "web-1", a.name, "10.244.0.1", labels={"app": "web"})
    create_pod(lab.core, lab.namespace, "dns-1", a.name, "10.244.0.2", labels={"app": "dns"}, ready=False)
    wait_addresses(a, {ip})
    set_pod_ready(lab.core, lab.namespace, "dns-1", True)
    since = a.mark()
    set_pod_ready(lab.core, lab.namespace, "web-1", False)
    a.wait_handled(f"endpointslices SET {lab.namespace}/web-", since)
    assert a.addresses() == {ip}  # dns still wants it
    set_pod_ready(lab.core, lab.namespace, "dns-1", False)
    wait_addresses(a, set())  # the last sharer let go
