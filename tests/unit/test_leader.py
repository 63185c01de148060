"""The allocator's leader election on a fake clock against a fake Lease API with latency: takeover only after
the Lease went unrenewed for its duration, and no overlap with a rival when renewals turn slow."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.rest import ApiException

from l3lb.k8s.leader import PERMISSIONS_AGAIN, LeaderElector


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.samples: list[tuple[float, bool]] = []
        self.elector: LeaderElector | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Moves time on, sampling is_leader() along the way (every 0.1 s)."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 0.1)
            if self.elector is not None:
                self.samples.append((self.now, self.elector.is_leader()))


class LeaseApi:
    """One Lease, with a latency per request; a request slower than its timeout times out."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lease: dict[str, Any] | None = None
        self.latency = 0.05
        self.landed: list[float] = []
        """When each of our successful writes reached the server: a rival's clock starts there."""

    def _wait(self, timeout: float) -> None:
        if self.latency > timeout:
            self.clock.advance(timeout)
            raise TimeoutError("read timed out")
        self.clock.advance(self.latency)

    def get_json(self, url: str, timeout: float = 10.0, **kw: Any) -> Any:
        self._wait(timeout)
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    def put(self, url: str, body: Any, timeout: float = 10.0, **kw: Any) -> Any:
        self._wait(timeout / 2)  # the request reaches the server halfway
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self._store(body)
        self._wait(timeout / 2)
        return body

    def post(self, url: str, body: Any, timeout: float = 10.0, **kw: Any) -> Any:
        self._wait(timeout / 2)
        if self.lease is not None:
            raise ApiException(status=409)
        self._store(body)
        return body

    def _store(self, body: dict[str, Any]) -> None:
        rv = int((self.lease or {"metadata": {"resourceVersion": "0"}})["metadata"]["resourceVersion"]) + 1
        self.lease = {
            **copy.deepcopy(body),
            "metadata": {**body.get("metadata", {}), "resourceVersion": str(rv)},
        }
        if body["spec"]["holderIdentity"] == "me":
            self.landed.append(self.clock.now)


class Stop:
    """The election loop's stop event: its waits move the fake clock; it is set once ``until`` is reached."""

    def __init__(self, clock: Clock, until: float, at: dict[float, Any] | None = None) -> None:
        self.clock = clock
        self.until = until
        self.at = dict(at or {})

    def is_set(self) -> bool:
        for t in sorted(self.at):
            if self.clock.now >= t:
                self.at.pop(t)()
        return self.clock.now >= self.until

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.advance(timeout or 0.0)
        return self.is_set()


def make(clock: Clock, api: LeaseApi) -> tuple[LeaderElector, list[tuple[float, bool]]]:
    changes: list[tuple[float, bool]] = []
    e = LeaderElector(
        api, "kube-system", "me", lambda leader: changes.append((clock.now, leader)), clock=clock
    )  # type: ignore[arg-type]
    clock.elector = e
    return e, changes


def test_acquires_a_free_lease_renews_it_and_stays_leader() -> None:
    clock = Clock()
    api = LeaseApi(clock)
    e, changes = make(clock, api)
    e.run(Stop(clock, until=60))  # type: ignore[arg-type]
    assert changes == [(changes[0][0], True)] and changes[0][0] < 0.2
    assert len(api.landed) >= 25, "renewed every retry period (2 s)"
    assert all(leader for t, leader in clock.samples if t > 0.2)


def test_takes_over_only_after_the_lease_went_unrenewed_for_its_duration_as_seen_locally() -> None:
    clock = Clock()
    api = LeaseApi(clock)
    api.lease = {
        "metadata": {"name": "l3lb-allocator", "resourceVersion": "5"},
        "spec": {"holderIdentity": "rival", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00Z"},
    }
    e, changes = make(clock, api)
    e.run(Stop(clock, until=40))  # type: ignore[arg-type]
    (t, leader) = changes[0]
    assert leader and 15 <= t <= 15 + 2 + 0.5, (
        "after 15 s unchanged (its renewTime, in the past, is not trusted)"
    )


def test_slow_renewals_end_leadership_before_a_rival_could_take_over() -> None:
    """From t=20 every request hangs for 30 s. Each attempt is bounded by the renew deadline, and
    is_leader() turns False 10 s after the send time of the last good renewal, while a rival may take over
    only 15 s after that renewal landed: never two leaders."""
    clock = Clock()
    api = LeaseApi(clock)
    e, changes = make(clock, api)

    def slow() -> None:
        api.latency = 30.0

    e.run(Stop(clock, until=60, at={20.0: slow}))  # type: ignore[arg-type]
    assert [leader for _, leader in changes] == [True, False]
    last_landed = api.landed[-1]
    rival_earliest = last_landed + 15
    led = [t for t, leader in clock.samples if leader]
    assert max(led) < rival_earliest - 4, (
        f"led until {max(led):.1f}, a rival could lead from {rival_earliest:.1f}"
    )
    lost_at = changes[1][0]
    assert lost_at <= last_landed + 10 + 0.2, "the election thread itself steps down at the deadline"


def test_the_holder_publishes_its_pools_fingerprint_and_the_others_are_told_it() -> None:
    clock = Clock()
    api = LeaseApi(clock)
    leader = LeaderElector(api, "kube-system", "me", lambda _: None, clock=clock, fingerprint="aaaa")  # type: ignore[arg-type]
    leader.try_acquire_or_renew(clock.now + 10)
    assert api.lease is not None
    assert api.lease["metadata"]["annotations"] == {"l3lb.io/pools-fingerprint": "aaaa"}
    told: list[tuple[str, str]] = []
    other = LeaderElector(
        api,
        "kube-system",
        "other",
        lambda _: None,
        clock=clock,
        fingerprint="bbbb",
        on_holder=lambda *a: told.append(a),
    )  # type: ignore[arg-type]
    assert other.try_acquire_or_renew(clock.now + 10) is False
    assert told == [("me", "aaaa")]
    leader.fingerprint = "cccc"  # a restart with another configuration
    leader.try_acquire_or_renew(clock.now + 10)
    other.try_acquire_or_renew(clock.now + 10)
    assert told[-1] == ("me", "cccc")


class ReviewedLeaseApi(LeaseApi):
    """The Lease API behind an RBAC that answers SelfSubjectAccessReviews with ``allowed``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.allowed = False
        self.reviews: list[float] = []

    @property
    def rounds(self) -> int:
        """Checks of the permissions (each asks a review per permission, within the same moment)."""
        return sum(1 for i, t in enumerate(self.reviews) if i == 0 or t - self.reviews[i - 1] > 1.0)

    def post(self, url: str, body: Any, timeout: float = 10.0, **kw: Any) -> Any:
        if url.endswith("/selfsubjectaccessreviews"):
            self.reviews.append(self.clock.now)
            return {"status": {"allowed": self.allowed}}
        return super().post(url, body, timeout, **kw)


def test_stands_once_the_rbac_arrives_after_the_start() -> None:
    """k3s applies the agent's RBAC manifest a while after it starts the agent: no restart is needed."""
    clock = Clock()
    api = ReviewedLeaseApi(clock)
    e, changes = make(clock, api)  # type: ignore[arg-type]

    def grant() -> None:
        api.allowed = True

    e.stand(Stop(clock, 100.0, at={45.0: grant}))  # type: ignore[arg-type]
    assert changes and changes[0][1] is True
    assert 45.0 <= changes[0][0] <= 45.0 + PERMISSIONS_AGAIN + 1, changes
    assert api.rounds == 3  # at 0, 30 and 60 s


def test_without_the_rights_it_asks_again_but_never_stands() -> None:
    clock = Clock()
    api = ReviewedLeaseApi(clock)
    e, changes = make(clock, api)  # type: ignore[arg-type]
    e.stand(Stop(clock, 100.0))  # type: ignore[arg-type]
    assert changes == [] and api.lease is None
    assert api.rounds == 4  # at 0, 30, 60 and 90 s: no busier
