"""Writes to the API without a cluster: Events (rate limits per object and per agent, repeats aggregated into
a count, safe from any thread) and status writes (conditional, made as field manager l3lb, only while
leading, and tried again by the allocator when they do not land)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from l3lb.config import Config, parse_prefixes
from l3lb.ipam.allocator import Allocator
from l3lb.k8s import events as events_module
from l3lb.k8s.events import Event, EventRecorder
from l3lb.k8s.writer import CONFLICT, NOT_LEADING, WRITTEN, StatusWriter
from l3lb.metrics import Metrics
from l3lb.model import Service, WatchEvent


class Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.refuse_with: list[Exception] = []
        """Raised by the next PATCHes of status, one each."""

    def merge_patch(self, url: str, body: Any, **kw: Any) -> Any:
        self.calls.append(("PATCH", url, body, kw))
        if self.refuse_with and url.endswith("/status"):
            raise self.refuse_with.pop(0)
        return body

    def post(self, url: str, body: Any, **kw: Any) -> Any:
        self.calls.append(("POST", url, body, kw))
        return body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder() -> tuple[EventRecorder, Api, Clock]:
    api, clock = Api(), Clock()
    return EventRecorder(api, "n1", clock=clock), api, clock  # type: ignore[arg-type]


def test_normal_events_per_service_burst_5_then_one_per_30s() -> None:
    r, _, clock = recorder()
    for _ in range(8):
        r.event(("ns", "a"), "uid", "Normal", "Announced", "n1 announces")
    assert r.queued == 5 and r.dropped == 3
    clock.now += 29
    r.event(("ns", "a"), "uid", "Normal", "Announced", "n1 announces")
    assert r.queued == 5, "not before 30 s"
    clock.now += 31
    r.event(("ns", "a"), "uid", "Normal", "Announced", "n1 announces")
    assert r.queued == 6


def test_normal_events_per_agent_burst_10_then_one_per_2s_and_warnings_always_pass() -> None:
    r, _, clock = recorder()
    for i in range(15):
        r.event(("ns", f"s{i}"), "uid", "Normal", "Announced", "n1 announces")
    assert r.queued == 10
    clock.now += 2
    r.event(("ns", "s99"), "uid", "Normal", "Announced", "n1 announces")
    assert r.queued == 11
    for i in range(20):
        r.event(("ns", f"s{i}"), "uid", "Warning", "IPInUse", "taken")
    assert r.queued == 31, "Warnings are never rate limited (they are deduplicated when written)"


def test_events_from_many_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop, the allocator and the election record Events at the same time: every token is taken
    exactly once and nothing raises. (The buckets once changed under a thread's feet: more Events than the
    limits allow, and 'dictionary changed size during iteration' out of event(); a round caught it seven
    times in eight, so five rounds.)"""
    monkeypatch.setattr(events_module, "AGENT_EVENT_BURST", 600)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a thread switch between almost any two bytecodes
    try:
        for _ in range(5):
            r, _, _ = recorder()
            errors: list[BaseException] = []

            def hammer(t: int, r: EventRecorder = r, errors: list[BaseException] = errors) -> None:
                try:
                    for i in range(2000):
                        r.event(("ns", f"s{t}-{i}"), "uid", "Normal", "Announced", "n1 announces")
                except BaseException as err:
                    errors.append(err)

            threads = [threading.Thread(target=hammer, args=(t,)) for t in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert r.queued == 600 and r.dropped == 8 * 2000 - 600
    finally:
        sys.setswitchinterval(switch)


def test_a_repeated_event_bumps_the_count_at_most_once_a_minute() -> None:
    r, api, clock = recorder()
    for _ in range(3):
        r.write(Event(("ns", "a"), "uid", "Warning", "IPInUse", "taken"))
        clock.now += 20
    assert [c[0] for c in api.calls] == ["POST"], "repeats within a minute only counted"
    clock.now += 10
    r.write(Event(("ns", "a"), "uid", "Warning", "IPInUse", "taken"))
    assert api.calls[-1][0] == "PATCH" and api.calls[-1][2]["count"] == 4


def test_an_event_about_a_node_goes_to_default_without_a_namespace_on_the_object() -> None:
    r, api, _ = recorder()
    r.write(Event(("", "n1"), "n1", "Warning", "PoolsMismatch", "differs", "Node"))
    (method, url, body, _) = api.calls[0]
    assert method == "POST" and url == "/api/v1/namespaces/default/events"
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n1"}
    assert body["metadata"]["namespace"] == "default"


def test_status_is_conditional_made_as_l3lb_and_a_conflict_is_told() -> None:
    told: list = []
    api = Api()
    w = StatusWriter(api, on_written=lambda *a: told.append(a))  # type: ignore[arg-type]
    assert w.write_now(("ns", "a"), ("10.0.100.1",), "42") == WRITTEN
    (_, url, body, kw) = api.calls[0]
    assert url == "/api/v1/namespaces/ns/services/a/status"
    assert body["metadata"] == {"resourceVersion": "42"} and kw["query"] == {
        "fieldManager": "l3lb/kube-system"
    }
    assert body["status"]["loadBalancer"]["ingress"] == [{"ip": "10.0.100.1", "ipMode": "VIP"}]
    api.refuse_with = [ApiException(status=409)]
    assert w.write_now(("ns", "a"), ("10.0.100.2",), "42") == CONFLICT
    assert told == [(("ns", "a"), WRITTEN, "42"), (("ns", "a"), CONFLICT, "42")]


def test_no_status_write_unless_leading_and_the_queue_can_be_dropped() -> None:
    leading = [False]
    api = Api()
    w = StatusWriter(api, may_write=lambda: leading[0])  # type: ignore[arg-type]
    assert w.write_now(("ns", "a"), ("10.0.100.1",), "1") == NOT_LEADING and api.calls == []
    leading[0] = True
    w.write(("ns", "b"), ("10.0.100.2",), "1")
    w.drop()
    stop = threading.Event()
    thread = w.start(stop)
    time.sleep(0.2)
    stop.set()
    thread.join(5)
    assert api.calls == [], "what was queued when leadership was lost never goes out"


def _service(resource_version: str) -> Service:
    return Service(
        key=("ns", "web"),
        uid="uid-web",
        is_load_balancer=True,
        load_balancer_class=None,
        local_policy=False,
        ingress_ips=(),
        requested_ips=(),
        families=("IPv4",),
        resource_version=resource_version,
    )


def _leading_allocator(api: Api) -> threading.Event:
    """An allocator that leads, with a real writer and a real clock, holding one Service with no IP."""
    writer = StatusWriter(api)  # type: ignore[arg-type]
    config = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1")
    allocator = Allocator(config, writer, EventRecorder(api, "n1"), Metrics())  # type: ignore[arg-type]
    writer.on_written = allocator.written
    stop = threading.Event()
    writer.start(stop)
    allocator.start(stop)
    svc = _service("7")
    allocator.offer(WatchEvent("services", "REPLACE", [(svc.key, svc)], time.monotonic()))
    allocator.on_leader(True)
    return stop


def _status_patches(api: Api) -> list[Any]:
    return [c for c in api.calls if c[0] == "PATCH" and c[1].endswith("/status")]


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionResetError("connection reset by peer"),
        ApiException(status=503, reason="Service Unavailable"),
    ],
    ids=["transport", "503"],
)
def test_a_status_write_that_fails_is_tried_again_on_a_quiet_cluster(failure: Exception) -> None:
    """The apiserver blips during the write: with no event to come (a quiet cluster), the allocator still
    writes again after a backoff, and EXTERNAL-IP is not <pending> for ever."""
    api = Api()
    api.refuse_with = [failure]
    stop = _leading_allocator(api)
    try:
        deadline = time.monotonic() + 5
        while len(_status_patches(api)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    patches = _status_patches(api)
    assert len(patches) == 2, patches
    assert patches[1][2]["status"]["loadBalancer"]["ingress"] == [{"ip": "10.0.100.1", "ipMode": "VIP"}]


def test_a_conflict_waits_for_a_newer_version_instead_of_writing_again_at_once() -> None:
    """409: the Service changed since the decision. Writing again at once on the same resourceVersion
    only meets 409 again (it once did so, 20 times a second, until the watch caught up); the allocator
    waits for the watch to bring the new version, or for a backoff."""
    api = Api()
    api.refuse_with = [ApiException(status=409)] * 50
    stop = _leading_allocator(api)
    try:
        time.sleep(1.6)
    finally:
        stop.set()
    patches = _status_patches(api)
    assert 2 <= len(patches) <= 3, f"{len(patches)} writes in 1.6 s"
