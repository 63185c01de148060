"""The leader's writes of Service conditions (``status.conditions``), made by a thread of its own at a pace
capped cluster-wide (only the leader writes): at most one every 1/RATE seconds. The latest request per
Service wins (coalesced), and a Service whose condition changes status goes before one whose message alone
changes.

Each write is a strategic merge patch of the status subresource. ``ServiceStatus.Conditions`` is a list map
keyed by ``type`` (``patchStrategy:"merge" patchMergeKey:"type"``, ``+listType=map``, in k8s.io/api
core/v1), so the patch changes our entries only and leaves any other controller's conditions as they are,
where a JSON merge patch would replace the whole list with ours. A condition of ours to remove is a
``$patch: delete`` entry. The patch carries the resourceVersion the conditions were decided on: if the
Service changed since, the apiserver answers 409 and the keeper decides again from the newer version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

from ..model import Condition, Key, field_manager, fmt_key
from .api import Api, api_message, path
from .writer import CONFLICT, DENIED, FAILED, GONE, NOT_LEADING, STATUS_PATH, WRITTEN

log = logging.getLogger(__name__)

RATE = 20.0
"""Condition writes a second, at most, for the whole cluster. Every write reaches every watcher of Services
(each l3lb agent, each kube-proxy, other controllers): at 20 a second, on 100 nodes, 4,000 deliveries a
second that change nothing for them. 20 is kube-controller-manager's default client rate (--kube-api-qps)
for all its controllers together; conditions are information, not traffic, and must never crowd out the
writes that are (the allocator's status writes are not paced). A change that touches N Services' conditions
at once (a node that stops being Ready, for every Cluster Service) is written in N/20 seconds."""
REJECTED = "rejected"
"""422: the apiserver refuses the conditions themselves (a bug of ours): said with the apiserver's reason."""


@dataclass(frozen=True, slots=True)
class Request:
    conditions: tuple[Condition, ...]
    """To set (lastTransitionTime filled in)."""
    remove: tuple[str, ...]
    """Types of ours to remove."""
    resource_version: str
    """Written only if the Service is still at this version (when given)."""
    uid: str = ""
    """Written only to this Service, not to another one made since under the same name (when given)."""


Told = Callable[[Key, str, Request, str], None]
"""Told (key, outcome, the request, the resourceVersion the Service got from a write that landed, else "")
from the writer's thread."""


class ConditionWriter:
    def __init__(
        self,
        api: Api,
        *,
        may_write: Callable[[], bool] = lambda: True,
        on_written: Told = lambda key, outcome, request, landed: None,
        lease_namespace: str = "kube-system",
        clock: Callable[[], float] = time.monotonic,
        rate: float = RATE,
    ) -> None:
        self.api = api
        self.field_manager = f"{field_manager(lease_namespace)}/conditions"
        """Its own beside the status writes': managedFields and audit logs tell them apart."""
        self.may_write = may_write
        self.on_written = on_written
        self.clock = clock
        self.interval = 1.0 / rate
        self._cond = threading.Condition()
        self._pending: dict[Key, Request] = {}
        """In the order first asked (a newer request for a Service keeps its place)."""
        self._urgent: dict[Key, None] = {}
        """Pending Services whose conditions change status: written first."""
        self._next_at = 0.0
        self._denied = False

    # ---- requests (never block)
    def write(self, key: Key, request: Request, *, urgent: bool = False) -> None:
        with self._cond:
            self._pending[key] = request
            if urgent:
                self._urgent[key] = None
            self._cond.notify()

    def drop(self) -> None:
        """Forgets the writes not yet made (leadership was lost)."""
        with self._cond:
            self._pending.clear()
            self._urgent.clear()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    # ---- the writer thread
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="condition-writer", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._cond:
                while not (self._pending or stop.is_set()):
                    self._cond.wait(1.0)
            delay = self._next_at - self.clock()
            if delay > 0:
                stop.wait(delay)
            elif not stop.is_set():
                self.write_next()

    def write_next(self) -> str | None:
        """Writes the most pressing request (a change of status first, else the oldest); returns how it
        went, None when there was none. The next write may start 1/rate seconds after this one did."""
        with self._cond:
            if not self._pending:
                return None
            key = next(iter(self._urgent)) if self._urgent else next(iter(self._pending))
            request = self._pending.pop(key)
            self._urgent.pop(key, None)
        self._next_at = self.clock() + self.interval
        outcome, landed = self._patch(key, request)
        self.on_written(key, outcome, request, landed)
        return outcome

    def _patch(self, key: Key, request: Request) -> tuple[str, str]:
        """How the write went, and the Service's new resourceVersion if it landed."""
        if not self.may_write():
            return NOT_LEADING, ""
        entries: list[dict[str, Any]] = [
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": c.last_transition_time,
                # Services have no metadata.generation (1.35): the field is left out while it is 0
                **({"observedGeneration": c.observed_generation} if c.observed_generation else {}),
            }
            for c in request.conditions
        ]
        entries += [{"type": t, "$patch": "delete"} for t in request.remove]
        body: dict[str, Any] = {"status": {"conditions": entries}}
        meta = {"resourceVersion": request.resource_version, "uid": request.uid}
        if any(meta.values()):
            body["metadata"] = {k: v for k, v in meta.items() if v}
        url = path(STATUS_PATH, ns=key[0], name=key[1])
        try:
            svc = self.api.strategic_merge_patch(url, body, query={"fieldManager": self.field_manager})
        except ApiException as err:
            return self._failed(key, request, err), ""
        except Exception as err:  # the apiserver cannot be reached
            log.warning("could not write the conditions of %s: %s", fmt_key(key), err)
            return FAILED, ""
        log.debug(
            "wrote conditions of %s: %s",
            fmt_key(key),
            "; ".join(f"{c.type}={c.status} {c.reason}" for c in request.conditions) or "removed ours",
        )
        return WRITTEN, str(((svc or {}).get("metadata") or {}).get("resourceVersion") or "")

    def _failed(self, key: Key, request: Request, err: ApiException) -> str:
        if err.status == 409:
            log.debug("conditions of %s: the Service changed since; deciding again", fmt_key(key))
            return CONFLICT
        if err.status == 404:
            return GONE
        if err.status == 403:
            if not self._denied:
                self._denied = True
                log.error(
                    "permission denied to patch services/status (conditions of %s): %s. Grant it to the "
                    "agent's identity (see deploy/rbac.yaml)",
                    fmt_key(key),
                    api_message(err),
                )
            return DENIED
        if err.status == 422 and not request.conditions:
            return GONE  # removing ours from a Service gone since: another one has the name (its uid)
        if err.status == 422:
            log.error("the apiserver refuses the conditions of %s: %s", fmt_key(key), api_message(err))
            return REJECTED
        log.warning("could not write the conditions of %s: %s %s", fmt_key(key), err.status, api_message(err))
        return FAILED
