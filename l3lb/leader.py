"""Leader election for the allocator through a coordination.k8s.io/v1 Lease, as client-go does it.

The Lease is taken over only after it went unrenewed for its whole duration *as observed locally* (no
trust in other nodes' clocks), renewed every retry period, and given up if it cannot be renewed within the
renew deadline. On stop the leader releases it (empty holder, 1 s duration), so a successor takes over at
once instead of after 15 s.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from .kube import Api, api_message, may, path

log = logging.getLogger(__name__)

LEASE_NAME = "l3lb-allocator"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
LEASE = LEASES + "/{name}"


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
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.on_change = on_change
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.leader = False
        self._observed: tuple[Any, float] | None = None  # (holder/renewTime record, when we saw it change)
        self._last_renew = 0.0

    @property
    def url(self) -> str:
        return path(LEASE, ns=self.namespace, name=LEASE_NAME)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.stand, args=(stop,), name="leader-election", daemon=True)
        thread.start()
        return thread

    def stand(self, stop: threading.Event) -> None:
        """Stands for election if these credentials may allocate, once the apiserver can say so."""
        delay = 1.0
        while not stop.is_set():
            try:
                ok, missing = may_stand(self.api, self.namespace)
                break
            except Exception as err:  # apiserver unreachable: ask again
                log.debug("cannot check permissions yet: %s", err)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        else:
            return
        if not ok:
            log.warning(
                "not standing for the allocator election: this identity may not %s; this agent "
                "announces but never allocates",
                missing,
            )
            return
        log.info(
            "standing for the allocator election (lease %s/%s as %s)",
            self.namespace,
            LEASE_NAME,
            self.identity,
        )
        self.run(stop)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                ok = self.try_acquire_or_renew()
            except Exception as err:  # apiserver unreachable: the renew deadline decides
                log.debug("lease %s/%s: %s", self.namespace, LEASE_NAME, err)
                ok = False
            if ok:
                self._last_renew = self.clock()
            if ok != self.leader and (ok or self.clock() - self._last_renew > self.renew_deadline):
                self._set(ok)
            stop.wait(self.retry_period)

    def _set(self, leader: bool) -> None:
        self.leader = leader
        log.info("%s the allocator lease %s/%s", "acquired" if leader else "lost", self.namespace, LEASE_NAME)
        self.on_change(leader)

    def try_acquire_or_renew(self) -> bool:
        try:
            lease = self.api.get_json(self.url)
        except ApiException as err:
            if err.status != 404:
                raise
            return self._create()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        now = self.clock()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        expired = now - self._observed[1] > duration
        if holder and holder != self.identity and not expired:
            return False
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
            self.api.request("PUT", self.url, body=lease, content_type="application/json").release_conn()
        except ApiException as err:
            if err.status == 409:
                return False  # someone else wrote it first
            raise
        return True

    def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_duration,
                "acquireTime": _now(),
                "renewTime": _now(),
                "leaseTransitions": 0,
            },
        }
        try:
            self.api.post(path(LEASES, ns=self.namespace), body)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def release(self) -> None:
        """Gives the lease up at once (on SIGTERM), if we hold it."""
        if not self.leader:
            return
        try:
            lease = self.api.get_json(self.url)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()})
                self.api.request("PUT", self.url, body=lease, content_type="application/json").release_conn()
                log.info("released the allocator lease %s/%s", self.namespace, LEASE_NAME)
        except Exception as err:
            log.warning("could not release the allocator lease: %s", err)
        self.leader = False
        self.on_change(False)


def may_stand(api: Api, namespace: str) -> tuple[bool, str]:
    """Whether these credentials may allocate: patch services/status and write Leases (by
    SelfSubjectAccessReview), and if not, what is missing."""
    needs = [
        ("patch", "", "services", "status", None),
        ("get", "coordination.k8s.io", "leases", "", namespace),
        ("create", "coordination.k8s.io", "leases", "", namespace),
        ("update", "coordination.k8s.io", "leases", "", namespace),
    ]
    missing = []
    for verb, group, resource, sub, ns in needs:
        try:
            allowed = may(api, verb, group, resource, sub, ns)
        except ApiException as err:
            if err.status not in (401, 403):
                raise  # the apiserver could not answer: ask again later
            return False, f"create selfsubjectaccessreviews ({api_message(err)})"
        if not allowed:
            missing.append(f"{verb} {resource}{'/' + sub if sub else ''}" + (f" in {ns}" if ns else ""))
    return (not missing), ", ".join(missing)
