"""The Services' conditions: their text (compose), the paced writer, and the leader's keeper with fakes and
fake clocks."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from l3lb.conditions.compose import (
    ALLOCATED,
    ANNOUNCED,
    MAX_MESSAGE,
    allocated,
    announced,
)
from l3lb.conditions.keeper import Keeper
from l3lb.config import Config, parse_prefixes
from l3lb.ipam.allocator import STATUS_CONFLICT, YIELDED, Assigned
from l3lb.ipam.assign import UNKNOWN_POOL
from l3lb.k8s.conditions import REJECTED, ConditionWriter, Request
from l3lb.k8s.writer import CONFLICT, FAILED, GONE, NOT_LEADING, WRITTEN
from l3lb.model import (
    Condition,
    Service,
    node_entry,
    parse_service,
    slice_by_node_entry,
)
from l3lb.node.cluster import NODES, SLICES_BY_NODE, Announcement

CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1")
IP = "10.0.100.5"


def service(
    name: str = "web",
    ips: tuple[str, ...] = (IP,),
    *,
    local: bool = False,
    rv: str = "1",
    conditions: tuple[Condition, ...] = (),
    lb_class: str | None = None,
) -> Service:
    spec: dict[str, Any] = {"type": "LoadBalancer", "externalTrafficPolicy": "Local" if local else "Cluster"}
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    svc = parse_service(
        {
            "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "generation": 3},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
        }
    )
    return dataclasses.replace(svc, resource_version=rv, conditions=conditions)


def node(name: str, *, ready: bool = True, excluded: bool = False) -> tuple:
    labels = {"node.kubernetes.io/exclude-from-external-load-balancers": ""} if excluded else {}
    obj = {
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    return node_entry(obj)


def slice_of(svc: str, *nodes: str, ready: bool = True) -> tuple:
    obj = {
        "metadata": {"namespace": "ns", "name": f"{svc}-1", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [{"nodeName": n, "conditions": {"ready": ready}} for n in nodes],
    }
    return slice_by_node_entry(obj)


def ann(
    *nodes: tuple[str, str, bool], unannounced: tuple[str, ...] = (), node_reasons=frozenset()
) -> Announcement:
    return Announcement(tuple(nodes), unannounced, frozenset(node_reasons))


# ---- what the conditions say
def test_announced_names_the_nodes_and_says_where_it_comes_from() -> None:
    c = announced(
        service(),
        ann(
            ("a", "localReadyEndpoints", True),
            ("b", "noLocalReadyEndpoint", False),
            ("c", "nodeExcluded", False),
        ),
    )
    assert (c.type, c.status, c.reason, c.observed_generation) == (
        ANNOUNCED,
        "True",
        "LocalReadyEndpoints",
        3,
    )
    assert c.message.startswith("announced by a; not by b (noLocalReadyEndpoint), c (nodeExcluded); ")
    assert "as the agents decide from the API, not read from the nodes" in c.message


def test_announced_counts_large_groups_and_stays_bounded() -> None:
    many = [(f"n{i:03d}", "noLocalReadyEndpoint", False) for i in range(30)]
    c = announced(service(), ann(*[(f"a{i}", "localReadyEndpoints", True) for i in range(12)], *many))
    assert c.message.startswith("announced by 12 nodes; not by 30 nodes (noLocalReadyEndpoint); ")
    long = [("x" * 250 + str(i), "nodeExcluded", False) for i in range(5)]
    c = announced(service(), ann(("a", "readyEndpoints", True), *long))
    assert len(c.message) <= MAX_MESSAGE and "not by 5 nodes (nodeExcluded)" in c.message


def test_announced_false_gives_the_services_reason_before_the_nodes() -> None:
    c = announced(
        service(),
        ann(
            ("a", "nodeExcluded", False),
            ("b", "nodeExcluded", False),
            ("c", "noReadyEndpoint", False),
            node_reasons={"nodeExcluded"},
        ),
    )
    assert (c.status, c.reason) == ("False", "NoReadyEndpoint")
    assert c.message.startswith("announced by no node: a, b (nodeExcluded), c (noReadyEndpoint)")
    c = announced(service(), ann(("a", "nodeExcluded", False), node_reasons={"nodeExcluded"}))
    assert c.reason == "NodeExcluded"
    assert announced(service(), ann()).reason == "NoNodes"
    partly = announced(service(), ann(("a", "readyEndpoints", True), unannounced=("10.0.100.200",)))
    assert (partly.status, partly.reason) == ("False", "NodeNotSelected")
    assert "10.0.100.200 by no node" in partly.message


def test_allocated_names_the_pool_or_the_refusal() -> None:
    svc = service()
    c = allocated(Assigned(svc, True, (IP,), (("AnnotationConflict", "two annotations disagree"),)), CFG)
    assert c is not None and (c.status, c.reason, c.message) == (
        "True",
        "Allocated",
        f"{IP} from pool default",
    )
    c = allocated(Assigned(service(ips=()), True, (), ((UNKNOWN_POOL, "names pool 'x'"),)), CFG)
    assert c is not None and (c.status, c.reason, c.message) == ("False", UNKNOWN_POOL, "names pool 'x'")
    assert allocated(Assigned(service(ips=()), True, (IP,)), CFG) is None, "its status write is on its way"
    assert allocated(Assigned(svc, True, (IP,), writing=True), CFG) is None, "a takeover on its way"
    theirs = service(ips=("198.51.100.1",))
    c = allocated(Assigned(theirs, True, (IP,), ((STATUS_CONFLICT, YIELDED),)), CFG)
    assert c is not None and (c.status, c.reason) == ("False", STATUS_CONFLICT)


# ---- the writer
class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, dict]] = []
        self.fail: list[Exception] = []
        self.now: list[float] = [0.0]
        self.at: list[float] = []

    def strategic_merge_patch(self, url: str, body: dict, query: dict) -> dict:
        self.calls.append((url, body, query))
        self.at.append(self.now[0])
        if self.fail:
            raise self.fail.pop(0)
        return {"metadata": {"resourceVersion": "42"}}


class FakeStop:
    """stop.wait() advances the fake clock; set once nothing is left to write."""

    def __init__(self, now: list[float], writer: ConditionWriter) -> None:
        self.now, self.writer = now, writer

    def is_set(self) -> bool:
        return not self.writer.backlog

    def wait(self, seconds: float) -> None:
        self.now[0] += seconds


def cond(kind: str = ANNOUNCED, status: str = "True", message: str = "m") -> Condition:
    return Condition(kind, status, "ReadyEndpoints", message, 3, "2026-01-01T00:00:00Z")


def test_a_write_is_a_strategic_merge_patch_of_our_entries_conditional_on_version_and_uid() -> None:
    api = FakeApi()
    writer = ConditionWriter(api, lease_namespace="l3lb-system")  # type: ignore[arg-type]
    told = []
    writer.on_written = lambda *a: told.append(a)
    writer.write(("ns", "web"), Request((cond(),), ("l3lb.io/Old",), "41", "uid-web"))
    assert writer.write_next() == WRITTEN
    assert told[0][3] == "42", "the version the write made"
    url, body, query = api.calls[0]
    assert url == "/api/v1/namespaces/ns/services/web/status"
    assert query == {"fieldManager": "l3lb/l3lb-system/conditions"}
    assert body == {
        "metadata": {"resourceVersion": "41", "uid": "uid-web"},
        "status": {
            "conditions": [
                {
                    "type": ANNOUNCED,
                    "status": "True",
                    "reason": "ReadyEndpoints",
                    "message": "m",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {"type": "l3lb.io/Old", "$patch": "delete"},
            ]
        },
    }


def test_writes_are_paced_coalesced_and_a_change_of_status_goes_first() -> None:
    api = FakeApi()
    writer = ConditionWriter(api, clock=lambda: api.now[0], rate=20.0)  # type: ignore[arg-type]
    for i in range(40):
        writer.write(("ns", f"s{i:02d}"), Request((cond(message="old"),), (), "1"))
    writer.write(("ns", "s05"), Request((cond(message="new"),), (), "2"))  # coalesced, keeps its place
    writer.write(("ns", "s30"), Request((cond(status="False"),), (), "2"), urgent=True)
    writer.run(FakeStop(api.now, writer))  # type: ignore[arg-type]
    names = [url.split("/")[6] for url, _, _ in api.calls]
    assert len(names) == 40 and names[0] == "s30" and names[1:6] == ["s00", "s01", "s02", "s03", "s04"]
    assert api.calls[6][1]["status"]["conditions"][0]["message"] == "new"
    gaps = [b - a for a, b in zip(api.at, api.at[1:], strict=False)]
    assert min(gaps) >= 0.05 - 1e-9, "at most 20 a second"
    assert api.at[-1] == pytest.approx(39 * 0.05)


@pytest.mark.parametrize(
    ("error", "request_", "outcome"),
    [
        (ApiException(status=409), Request((cond(),), (), "1"), CONFLICT),
        (ApiException(status=404), Request((cond(),), (), "1"), GONE),
        (ApiException(status=422), Request((cond(),), (), "1"), REJECTED),
        (ApiException(status=422), Request((), (ANNOUNCED,), "", "uid"), GONE),  # another Service by the name
        (ApiException(status=503), Request((cond(),), (), "1"), FAILED),
        (ConnectionResetError(), Request((cond(),), (), "1"), FAILED),
    ],
)
def test_how_a_write_went(error: Exception, request_: Request, outcome: str) -> None:
    api = FakeApi()
    api.fail = [error]
    told = []
    writer = ConditionWriter(api, on_written=lambda *a: told.append(a))  # type: ignore[arg-type]
    writer.write(("ns", "web"), request_)
    assert writer.write_next() == outcome and told == [(("ns", "web"), outcome, request_, "")]


def test_nothing_is_written_when_not_leading() -> None:
    api = FakeApi()
    writer = ConditionWriter(api, may_write=lambda: False)  # type: ignore[arg-type]
    writer.write(("ns", "web"), Request((cond(),), (), "1"))
    assert writer.write_next() == NOT_LEADING and api.calls == []


# ---- the keeper
class FakeWriter:
    def __init__(self) -> None:
        self.asked: list[tuple[str, Request, bool]] = []
        self.drops = 0

    def write(self, key: tuple[str, str], request: Request, *, urgent: bool = False) -> None:
        self.asked.append((key[1], request, urgent))

    def drop(self) -> None:
        self.drops += 1

    @property
    def backlog(self) -> int:
        return 0


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def event(self, key: object, uid: str, kind: str, reason: str, message: str) -> None:
        self.seen.append(reason)


class Tally:
    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.pending = 0

    def written(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    def backlog(self, pending: int) -> None:
        self.pending = pending


class Harness:
    """A keeper with fakes: a fake writer, fake watches (their sink kept), a fake clock."""

    def __init__(self) -> None:
        self.now = [0.0]
        self.writer = FakeWriter()
        self.events = Events()
        self.tally = Tally()
        self.sinks: list = []
        self.stopped = 0

        def start_watches(sink):  # type: ignore[no-untyped-def]
            self.sinks.append(sink)
            return self._stop

        self.keeper = Keeper(
            CFG,
            self.writer,
            self.events,
            self.tally,
            start_watches,
            clock=lambda: self.now[0],
            wall=lambda: self.now[0],
        )

    def _stop(self) -> None:
        self.stopped += 1

    def lead(self, *services: Service, slices: tuple = ()) -> None:
        self.keeper.step(
            [("leader", True), ("assigned", ({s.key: self.assigned(s) for s in services}, True))]
        )
        self.watch(NODES, "REPLACE", [node("a"), node("b")])
        self.watch(SLICES_BY_NODE, "REPLACE", list(slices))

    @staticmethod
    def assigned(svc: Service) -> Assigned:
        return Assigned(svc, True, svc.ingress_ips)

    def watch(self, resource: str, kind: str, value: Any) -> None:
        self.sinks[-1](resource, kind, value)
        self.flush()

    def hand(self, *services: Service, gone: tuple = ()) -> None:
        changes: dict = {s.key: self.assigned(s) for s in services}
        changes.update({("ns", name): None for name in gone})
        self.keeper.on_assigned(changes, False)
        self.flush()

    def flush(self, outcomes: list | None = None) -> None:
        """``outcomes``: (key, outcome, the version it was asked at, the version it made or "")."""
        for key, outcome, version, *landed in outcomes or []:
            request = next(
                r for n, r, _ in reversed(self.writer.asked) if n == key[1] and r.resource_version == version
            )
            self.keeper.written(key, outcome, request, landed[0] if landed else "")
        with self.keeper._cond:
            inbox, self.keeper._inbox = self.keeper._inbox, []
        self.keeper.step(inbox)

    def landed(self, svc: Service, rv: str) -> Service:
        """The Service as the watch shows it after the last write asked for it landed."""
        request = [r for name, r, _ in self.writer.asked if name == svc.key[1]][-1]
        return dataclasses.replace(svc, resource_version=rv, conditions=request.conditions)


def by_type(request: Request) -> dict[str, Condition]:
    return {c.type: c for c in request.conditions}


def test_conditions_wait_for_every_node_and_slice_then_say_where_it_is_announced() -> None:
    h = Harness()
    web = service(local=True)
    h.keeper.step([("leader", True), ("assigned", ({web.key: h.assigned(web)}, True))])
    h.watch(NODES, "REPLACE", [node("a"), node("b")])
    assert h.writer.asked == [], "the slices are not listed yet: never decide on half a picture"
    h.watch(SLICES_BY_NODE, "REPLACE", [slice_of("web", "a")])
    ((name, request, urgent),) = h.writer.asked
    assert name == "web" and urgent and request.resource_version == "1" and request.uid == "uid-web"
    got = by_type(request)
    assert (got[ALLOCATED].status, got[ALLOCATED].message) == ("True", f"{IP} from pool default")
    assert got[ANNOUNCED].reason == "LocalReadyEndpoints"
    assert got[ANNOUNCED].message.startswith("announced by a; not by b (noLocalReadyEndpoint);")
    assert got[ANNOUNCED].last_transition_time == "1970-01-01T00:00:00Z"


def test_only_a_changed_text_is_written_and_a_new_leader_writes_nothing() -> None:
    h = Harness()
    web = service(local=True)
    h.lead(web, slices=(slice_of("web", "a"),))
    web = h.landed(web, "2")
    h.hand(web)  # our write seen by the watch
    h.watch(SLICES_BY_NODE, "SET", slice_of("web", "a", "a"))  # two endpoints on a: the same text
    assert len(h.writer.asked) == 1
    h.now[0] += 50
    h.watch(SLICES_BY_NODE, "SET", slice_of("web", "a", "b"))  # b too: the message changes, not the status
    assert len(h.writer.asked) == 2
    _, request, urgent = h.writer.asked[-1]
    assert not urgent and request.resource_version == "2"
    assert by_type(request)[ANNOUNCED].message.startswith("announced by a, b;")
    assert by_type(request)[ANNOUNCED].last_transition_time == "1970-01-01T00:00:00Z", "kept: same status"
    web = h.landed(web, "3")
    h.hand(web)
    h.now[0] += 100
    h.watch(SLICES_BY_NODE, "SET", slice_of("web", "a", "b", ready=False))
    _, request, urgent = h.writer.asked[-1]
    assert urgent and by_type(request)[ANNOUNCED].status == "False"
    assert by_type(request)[ANNOUNCED].last_transition_time == "1970-01-01T00:02:30Z", "its status changed"
    assert by_type(request)[ALLOCATED].last_transition_time == "1970-01-01T00:00:00Z"

    successor = Harness()  # a new leader, from the Services as they are
    successor.lead(h.landed(web, "4"), slices=(slice_of("web", "a", "b", ready=False),))
    assert successor.writer.asked == []


def test_a_conflict_is_decided_again_from_the_newer_version_not_retried() -> None:
    h = Harness()
    web = service()
    h.lead(web, slices=(slice_of("web", "a"),))
    h.flush([(web.key, CONFLICT, "1")])
    h.now[0] += 120  # long past any backoff, but no newer version
    h.flush()
    assert len(h.writer.asked) == 1, "the same stale version is never written again"
    h.hand(dataclasses.replace(web, resource_version="2"))
    assert [r.resource_version for _, r, _ in h.writer.asked] == ["1", "2"]


def test_a_failed_write_is_decided_again_after_a_backoff() -> None:
    h = Harness()
    web = service()
    h.lead(web, slices=(slice_of("web", "a"),))
    h.flush([(web.key, FAILED, "1")])
    assert len(h.writer.asked) == 1, "not at once"
    h.now[0] += 1.0
    h.flush()
    assert len(h.writer.asked) == 2
    h.flush([(web.key, REJECTED, "1")])
    assert h.events.seen == ["ConditionsRejected"]
    assert h.tally.outcomes == [FAILED, REJECTED]


def test_a_write_held_back_by_a_lapsed_lease_is_decided_again_after_a_backoff() -> None:
    """The lease lapsed for a moment (a slow renewal) and was renewed in the same term: the write the writer
    held back is made after all."""
    h = Harness()
    web = service()
    h.lead(web, slices=(slice_of("web", "a"),))
    h.flush([(web.key, NOT_LEADING, "1")])
    assert len(h.writer.asked) == 1
    h.now[0] += 1.0
    h.flush()
    assert len(h.writer.asked) == 2 and h.tally.outcomes == [NOT_LEADING]


def test_ours_are_removed_from_a_service_that_is_not_ours_any_more_or_left_the_watch() -> None:
    h = Harness()
    web, api = service(), service("api")
    h.lead(web, api, slices=(slice_of("web", "a"),))
    web, api = h.landed(web, "2"), h.landed(api, "2")
    h.hand(web, api)
    other = dataclasses.replace(web, load_balancer_class="someone-else", resource_version="3")
    h.keeper.on_assigned({web.key: Assigned(other, False)}, False)
    h.flush()
    _, request, _ = h.writer.asked[-1]
    assert request.conditions == () and set(request.remove) == {ALLOCATED, ANNOUNCED}
    assert request.resource_version == "3"
    h.hand(gone=("api",))  # deleted, or its type changed (the apiserver keeps conditions then)
    _, request, _ = h.writer.asked[-1]
    assert request.conditions == () and request.resource_version == "" and request.uid == "uid-api"


def test_nothing_is_written_while_the_allocators_write_is_on_its_way_or_after_leadership_ends() -> None:
    h = Harness()
    new = service(ips=())
    h.keeper.step([("leader", True), ("assigned", ({new.key: Assigned(new, True, (IP,))}, True))])
    h.watch(NODES, "REPLACE", [node("a")])
    h.watch(SLICES_BY_NODE, "REPLACE", [])
    assert h.writer.asked == []
    h.hand(service(rv="2"))
    assert len(h.writer.asked) == 1
    h.keeper.step([("leader", False)])
    assert h.writer.drops == 1 and h.stopped == 1, "the leader's own watches end with its term"
    h.sinks[-1](SLICES_BY_NODE, "SET", slice_of("web", "a"))
    h.flush()
    assert len(h.writer.asked) == 1


def test_a_change_right_after_a_write_landed_is_made_at_the_version_that_write_made() -> None:
    """The watch shows our write a moment after the apiserver answered it: a change meanwhile is asked at
    the version our write made (not the one it replaced, which would only meet a conflict), and starts
    from what it wrote (its lastTransitionTime kept)."""
    h = Harness()
    web = service(local=True)
    h.lead(web, slices=(slice_of("web", "a"),))
    h.flush([(web.key, WRITTEN, "1", "2")])
    h.now[0] += 10
    h.watch(SLICES_BY_NODE, "SET", slice_of("web", "a", "b"))
    _, request, urgent = h.writer.asked[-1]
    assert request.resource_version == "2" and not urgent, "the same status as our landed write"
    assert by_type(request)[ANNOUNCED].last_transition_time == "1970-01-01T00:00:00Z"
    h.flush([(web.key, WRITTEN, "2", "3")])
    h.hand(h.landed(web, "3"))  # the watch catches up
    assert len(h.writer.asked) == 2
