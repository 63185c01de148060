"""The API writer without a cluster: Event rate limits (per Service and per agent), repeats aggregated into a
count, and status writes that are conditional, made as field manager l3lb, and only while leading."""

from __future__ import annotations

from typing import Any

from kubernetes.client.rest import ApiException

from l3lb.writer import Writer


class Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.refuse_with: int | None = None

    def merge_patch(self, url: str, body: Any, **kw: Any) -> Any:
        self.calls.append(("PATCH", url, body, kw))
        if self.refuse_with:
            raise ApiException(status=self.refuse_with)
        return body

    def post(self, url: str, body: Any, **kw: Any) -> Any:
        self.calls.append(("POST", url, body, kw))
        return body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**kw: Any) -> tuple[Writer, Api, Clock]:
    api, clock = Api(), Clock()
    return Writer(api, "n1", clock=clock, **kw), api, clock  # type: ignore[arg-type]


def queued(w: Writer) -> int:
    return len(w._events)


def test_normal_events_per_service_burst_5_then_one_per_30s() -> None:
    w, _, clock = make()
    for _ in range(8):
        w.event(("ns", "a"), "uid", "Normal", "Announced", "n1 announces")
    assert queued(w) == 5 and w.dropped == 3
    clock.now += 29
    w.event(("ns", "a"), "uid", "Normal", "Announced", "n1 announces")
    assert queued(w) == 5, "not before 30 s"
    clock.now += 31
    w.event(("ns", "a"), "uid", "Normal", "Announced", "n1 announces")
    assert queued(w) == 6


def test_normal_events_per_agent_burst_10_then_one_per_2s_and_warnings_always_pass() -> None:
    w, _, clock = make()
    for i in range(15):
        w.event(("ns", f"s{i}"), "uid", "Normal", "Announced", "n1 announces")
    assert queued(w) == 10
    clock.now += 2
    w.event(("ns", "s99"), "uid", "Normal", "Announced", "n1 announces")
    assert queued(w) == 11
    for i in range(20):
        w.event(("ns", f"s{i}"), "uid", "Warning", "IPInUse", "taken")
    assert queued(w) == 31, "Warnings are never rate limited (they are deduplicated when written)"


def test_a_repeated_event_bumps_the_count_at_most_once_a_minute() -> None:
    w, api, clock = make()
    for _ in range(3):
        w._write_event(("ns", "a"), "uid", "Warning", "IPInUse", "taken")
        clock.now += 20
    assert [c[0] for c in api.calls] == ["POST"], "repeats within a minute only counted"
    clock.now += 10
    w._write_event(("ns", "a"), "uid", "Warning", "IPInUse", "taken")
    assert api.calls[-1][0] == "PATCH" and api.calls[-1][2]["count"] == 4


def test_status_is_conditional_made_as_l3lb_and_refusals_go_back_to_the_allocator() -> None:
    refused: list = []
    w, api, _ = make(on_refused=refused.append)
    w._write_status(("ns", "a"), ("10.0.100.1",), "42")
    (_, url, body, kw) = api.calls[0]
    assert url == "/api/v1/namespaces/ns/services/a/status"
    assert body["metadata"] == {"resourceVersion": "42"} and kw["query"] == {
        "fieldManager": "l3lb/kube-system"
    }
    assert body["status"]["loadBalancer"]["ingress"] == [{"ip": "10.0.100.1", "ipMode": "VIP"}]
    api.refuse_with = 409
    w._write_status(("ns", "a"), ("10.0.100.2",), "42")
    assert refused == [("ns", "a")]


def test_no_status_write_unless_leading_and_the_queue_can_be_dropped() -> None:
    leading = [False]
    w, api, _ = make(may_write=lambda: leading[0])
    w._write_status(("ns", "a"), ("10.0.100.1",), "1")
    assert api.calls == []
    w.status(("ns", "b"), ("10.0.100.2",), "1")
    w.drop_status()
    assert w._status == {}


def test_an_event_about_a_node_goes_to_default_without_a_namespace_on_the_object() -> None:
    w, api, _ = make()
    w._write_event(("", "n1"), "n1", "Warning", "PoolsMismatch", "differs", "Node")
    (method, url, body, _) = api.calls[0]
    assert method == "POST" and url == "/api/v1/namespaces/default/events"
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n1"}
    assert body["metadata"]["namespace"] == "default"
