"""Leader election for the allocator through a coordination.k8s.io/v1 Lease, as client-go does it.

The Lease is taken over only after it went unrenewed for its whole duration *as observed locally* (no
trust in other nodes' clocks), renewed every retry period, and given up if it cannot be renewed within the
renew deadline. Leadership is valid until the time an attempt that succeeded was *sent* plus the renew
deadline, judged on the local clock: every attempt (its GET and its PUT) is bounded by that time, and
``is_leader()`` turns False at it even if the election thread is still blocked in a request. A rival takes
over only after seeing the Lease unchanged for its duration (15 s) counted from after our last write
landed, so two leaders never overlap (10 s < 15 s). On stop the leader releases the Lease (empty holder,
1 s duration), so a successor takes over at once instead of after 15 s.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from .api import Api, path
from .permissions import may_allocate

log = logging.getLogger(__name__)

LEASE_NAME = "l3lb-allocator"
POOLS_ANNOTATION = "l3lb.io/pools-fingerprint"
PERMISSIONS_AGAIN = 30.0
"""Seconds between two checks of the allocating permissions while they are missing."""
"""On the Lease: the fingerprint of the pools of the agent that holds it, for the others to compare."""
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
LEASE = LEASES + "/{name}"


def pools_fingerprint(lease: dict[str, Any]) -> str:
    """The holder's pools fingerprint on a Lease ("" if it has none)."""
    return ((lease.get("metadata") or {}).get("annotations") or {}).get(POOLS_ANNOTATION, "")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: Api,
        namespace: str,
        identity: str,
        on_change: Callable[[bool], None],
        *,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        fingerprint: str = "",
        on_holder: Callable[[str, str], None] = lambda holder, fingerprint: None,
    ) -> None:
        self.api = api
        self.fingerprint = fingerprint
        self.on_holder = on_holder
        """Told, on each attempt that reads a Lease held by a live agent, its holder and pools fingerprint."""
        self.namespace = namespace
        self.identity = identity
        self.on_change = on_change
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.leader = False
        self._observed: tuple[Any, float] | None = None  # (holder/renewTime record, when we saw it change)
        self.valid_until = 0.0
        """Local time we lead until, unless renewed: the last good attempt's send time + renew deadline."""

    @property
    def url(self) -> str:
        return path(LEASE, ns=self.namespace, name=LEASE_NAME)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.stand, args=(stop,), name="leader-election", daemon=True)
        thread.start()
        return thread

    def stand(self, stop: threading.Event) -> None:
        """Stands for election once these credentials may allocate. Asked again every PERMISSIONS_AGAIN
        seconds while they may not: the RBAC may come after the agent (k3s applies its manifests a while
        after it starts; an operator fixes a binding), and a restart must not be needed to pick it up."""
        delay = 1.0
        said = ""
        while not stop.is_set():
            try:
                ok, missing = may_allocate(self.api, self.namespace)
            except Exception as err:  # apiserver unreachable: ask again
                log.debug("cannot check permissions yet: %s", err)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if ok:
                break
            if missing != said:
                log.warning(
                    "not standing for the allocator election: this identity may not %s; this agent "
                    "announces but does not allocate (asking again every %.0fs)",
                    missing,
                    PERMISSIONS_AGAIN,
                )
                said = missing
            stop.wait(PERMISSIONS_AGAIN)
        else:
            return
        log.info(
            "standing for the allocator election (lease %s/%s as %s)",
            self.namespace,
            LEASE_NAME,
            self.identity,
        )
        self.run(stop)

    def is_leader(self) -> bool:
        """Whether this agent leads right now: checked before every status write."""
        return self.leader and self.clock() < self.valid_until

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            sent = self.clock()
            # An attempt never outlives our leadership; a candidate's is bounded by the renew deadline.
            deadline = self.valid_until if self.leader else sent + self.renew_deadline
            try:
                ok = self.try_acquire_or_renew(deadline)
            except Exception as err:  # apiserver unreachable or slow: the renew deadline decides
                log.debug("lease %s/%s: %s", self.namespace, LEASE_NAME, err)
                ok = False
            if ok:
                self.valid_until = sent + self.renew_deadline
                if not self.leader:
                    self._set(True)
            elif self.leader and self.clock() >= self.valid_until:
                self._set(False)
            stop.wait(max(0.0, self.retry_period - (self.clock() - sent)))

    def _set(self, leader: bool) -> None:
        self.leader = leader
        log.info("%s the allocator lease %s/%s", "acquired" if leader else "lost", self.namespace, LEASE_NAME)
        self.on_change(leader)

    def _timeout(self, deadline: float) -> float:
        left = deadline - self.clock()
        if left <= 0:
            raise TimeoutError("the renew deadline passed")
        return left

    def try_acquire_or_renew(self, deadline: float) -> bool:
        """One attempt; every request in it ends by ``deadline`` (local clock)."""
        try:
            lease = self.api.get_json(self.url, timeout=self._timeout(deadline))
        except ApiException as err:
            if err.status != 404:
                raise
            return self._create(deadline)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        now = self.clock()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        expired = now - self._observed[1] > duration
        if holder and holder != self.identity and not expired:
            self.on_holder(holder, pools_fingerprint(lease))
            return False
        meta = lease.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), POOLS_ANNOTATION: self.fingerprint}
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": spec.get("acquireTime") if holder == self.identity else _now(),
            "renewTime": _now(),
            "leaseTransitions": transitions,
        }
        try:
            self.api.put(self.url, lease, timeout=self._timeout(deadline))
        except ApiException as err:
            if err.status == 409:
                return False  # someone else wrote it first
            raise
        self.on_holder(self.identity, self.fingerprint)
        return True

    def _create(self, deadline: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": LEASE_NAME,
                "namespace": self.namespace,
                "annotations": {POOLS_ANNOTATION: self.fingerprint},
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_duration,
                "acquireTime": _now(),
                "renewTime": _now(),
                "leaseTransitions": 0,
            },
        }
        try:
            self.api.post(path(LEASES, ns=self.namespace), body, timeout=self._timeout(deadline))
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        self.on_holder(self.identity, self.fingerprint)
        return True

    def release(self) -> None:
        """Gives the lease up at once (on SIGTERM), if we hold it."""
        if not self.leader:
            return
        self.valid_until = 0.0  # no status write from here on
        try:
            lease = self.api.get_json(self.url, timeout=5.0)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()})
                self.api.put(self.url, lease, timeout=5.0)
                log.info("released the allocator lease %s/%s", self.namespace, LEASE_NAME)
        except Exception as err:
            log.warning("could not release the allocator lease: %s", err)
        self.leader = False
        self.on_change(False)
