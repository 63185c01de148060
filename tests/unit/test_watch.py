"""The list-then-watch loop against a scripted apiserver: resume, bookmarks, 410 as an event and as an HTTP
status, an object that cannot be parsed, and backoff instead of a tight loop."""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes.client.rest import ApiException

from l3lb.k8s.watch import Reflector


class Resp:
    """A watch response: newline-separated JSON events, as urllib3 streams them."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.data = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    def stream(self, amt: Any = None, decode_content: Any = None) -> Any:
        yield self.data

    def release_conn(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Done(Exception):
    """The script is over."""


class Script:
    """The apiserver: each list or watch request takes the next scripted answer (a value, or an exception
    to raise); a request after the last one stops the loop."""

    def __init__(self, stop: threading.Event, answers: list[Any]) -> None:
        self.stop = stop
        self.answers = answers
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def _next(self) -> Any:
        if not self.answers:
            self.stop.set()
            raise Done()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_json(self, url_path: str, query: dict[str, Any] | None = None, **kw: Any) -> Any:
        self.requests.append(("list", dict(query or {})))
        return self._next()

    def request(self, method: str, url_path: str, query: dict[str, Any] | None = None, **kw: Any) -> Any:
        self.requests.append(("watch", dict(query or {})))
        return self._next()


def obj(name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, **extra}


def listing(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": list(items)}


def parse(o: dict[str, Any]) -> tuple[tuple[str, str], str]:
    if o.get("bad"):
        raise ValueError("no such field")
    return ("ns", o["metadata"]["name"]), o["metadata"]["resourceVersion"]


class Waits:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.delays: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.delays.append(timeout or 0.0)
        return self.stop.is_set()

    def is_set(self) -> bool:
        return self.stop.is_set()


def run(answers: list[Any]) -> tuple[list[tuple[str, str, Any]], Script, Waits, list[Any]]:
    stop = threading.Event()
    api = Script(stop, answers)
    got: list[tuple[str, str, Any]] = []
    restarts: list[Any] = []
    r = Reflector(
        "services",
        api,  # type: ignore[arg-type]
        "/api/v1/services",
        parse,
        lambda res, kind, value: got.append((res, kind, value)),
        on_restart=lambda res, err: restarts.append(err),
    )
    waits = Waits(stop)
    r.run(waits)  # type: ignore[arg-type]
    assert isinstance(restarts.pop(), Done)
    waits.delays.pop()
    api.requests.pop()
    return got, api, waits, restarts


def test_lists_then_watches_from_the_list_and_resumes_after_a_timeout() -> None:
    got, api, _, _ = run(
        [
            listing("10", obj("a", "9")),
            Resp([{"type": "ADDED", "object": obj("b", "11")}]),  # the server ends the watch (timeout)
            Resp([{"type": "DELETED", "object": obj("a", "12")}]),
        ]
    )
    assert got == [
        ("services", "REPLACE", [(("ns", "a"), "9")]),
        ("services", "SET", (("ns", "b"), "11")),
        ("services", "DELETE", (("ns", "a"), "12")),
    ]
    kinds_rvs = [(k, q.get("resourceVersion")) for k, q in api.requests]
    assert kinds_rvs == [("list", None), ("watch", "10"), ("watch", "11")], "resumed, never relisted"
    assert api.requests[1][1]["allowWatchBookmarks"] == "true"


def test_a_bookmark_moves_the_resume_point_without_an_event() -> None:
    got, api, _, _ = run(
        [
            listing("10"),
            Resp([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "50"}}}]),
            Resp([]),
        ]
    )
    assert got == [("services", "REPLACE", [])]
    assert api.requests[-1][1]["resourceVersion"] == "50"


def test_410_as_a_watch_event_relists() -> None:
    got, api, waits, restarts = run(
        [
            listing("10", obj("a", "9")),
            Resp([{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]),
            listing("20", obj("b", "19")),
            Resp([]),
        ]
    )
    assert [k for k, _ in api.requests] == ["list", "watch", "list", "watch"]
    assert got[-1] == ("services", "REPLACE", [(("ns", "b"), "19")])
    assert restarts == [None] and waits.delays == [], "a relist at once, no backoff"


def test_410_as_an_http_status_relists() -> None:
    gone = ApiException(status=410, reason="Gone")
    _, api, _, restarts = run([listing("10"), gone, listing("20"), Resp([])])
    assert [k for k, _ in api.requests] == ["list", "watch", "list", "watch"]
    assert api.requests[-1][1]["resourceVersion"] == "20"
    assert len(restarts) == 1


def test_an_object_that_cannot_be_parsed_is_skipped_not_retried_forever() -> None:
    got, api, _, restarts = run(
        [
            listing("10", obj("a", "9"), obj("broken", "8", bad=True)),
            Resp(
                [
                    {"type": "MODIFIED", "object": obj("broken", "11", bad=True)},
                    {"type": "ADDED", "object": obj("c", "12")},
                ]
            ),
            Resp([]),
        ]
    )
    assert got == [
        ("services", "REPLACE", [(("ns", "a"), "9")]),
        ("services", "SET", (("ns", "c"), "12")),
    ]
    assert api.requests[-1][1]["resourceVersion"] == "12" and restarts == []


def test_errors_back_off_exponentially_instead_of_a_tight_loop_and_never_wait_over_3_s() -> None:
    """3 s at most: an agent whose watch is down misses endpoint changes, so it must be back soon after
    the apiserver is."""
    down = [ConnectionRefusedError("apiserver down")] * 8
    _, api, waits, restarts = run([*down, listing("10"), Resp([])])
    assert len(restarts) == 8 and all(isinstance(e, ConnectionRefusedError) for e in restarts)
    uppers = [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert all(up / 2 <= d <= up for d, up in zip(waits.delays, uppers, strict=True)), waits.delays
    assert [k for k, _ in api.requests][-2:] == ["list", "watch"]
