"""Writes to the API from one background thread, so no loop ever waits on the apiserver: Service status
(latest wins per Service) and Events (deduplicated and aggregated: a repeat bumps ``count``, written at most
once a minute, so a flapping input can never flood the API).

Status writes are the allocator's: each is a merge patch conditional on the resourceVersion it was decided
on (a 409 sends the Service back to the allocator), made as field manager ``l3lb/<lease namespace>`` (so
managedFields say which group of agents wrote it), and only while ``may_write()`` (the election: we lead);
the allocator drops what is queued when leadership is lost. A takeover (status another controller wrote,
kept as it is) is a server-side apply of the same value instead: a merge patch that changes nothing
changes no ownership either, while an apply makes our field manager an owner of it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kubernetes.client.rest import ApiException

from .kube import Api, api_message, path
from .model import Key, field_manager, fmt_key

log = logging.getLogger(__name__)

COMPONENT = "l3lb"
EVENT_REPEAT_WINDOW = 600.0
EVENT_PATCH_INTERVAL = 60.0
STATUS_WORKERS = 2
NORMAL_EVENT_BURST = 5
NORMAL_EVENT_REFILL = 30.0  # seconds per token: a flapping Service gets at most 2 Normal Events a minute
AGENT_EVENT_BURST = 10
AGENT_EVENT_REFILL = 2.0  # and one agent at most 30 a minute in all


@dataclass
class Bucket:
    """A token bucket: ``burst`` tokens, one more every ``refill`` seconds."""

    burst: float
    refill: float
    last: float
    tokens: float = -1.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def level(self, now: float) -> float:
        return min(self.burst, self.tokens + (now - self.last) / self.refill)

    def take(self, now: float) -> bool:
        self.tokens, self.last = self.level(now), now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


STATUS_PATH = "/api/v1/namespaces/{ns}/services/{name}/status"
EVENTS_PATH = "/api/v1/namespaces/{ns}/events"
EVENT_PATH = "/api/v1/namespaces/{ns}/events/{name}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Seen:
    name: str
    count: int
    first: str
    written: float
    last: float


class Writer:
    """Background writer of Service status and Events."""

    def __init__(
        self,
        api: Api,
        node_name: str,
        *,
        may_write: Callable[[], bool] = lambda: True,
        on_refused: Callable[[Key], None] = lambda key: None,
        clock: Callable[[], float] = time.monotonic,
        lease_namespace: str = "kube-system",
    ) -> None:
        self.api = api
        self.clock = clock
        self.field_manager = field_manager(lease_namespace)
        self.node_name = node_name
        self.may_write = may_write
        self.on_refused = on_refused
        """Told when a status write is refused because the Service changed since the decision (409)."""
        self._cond = threading.Condition()
        self._status: dict[Key, tuple[tuple[str, ...], str, bool]] = {}
        self._events: deque[tuple[Key, str, str, str, str, str]] = deque(maxlen=1000)
        self._seen: dict[tuple[Key, str, str], _Seen] = {}
        self._denied: set[str] = set()
        self._buckets: dict[Key, Bucket] = {}
        self._global = Bucket(AGENT_EVENT_BURST, AGENT_EVENT_REFILL, clock())
        self.errors = 0
        self.dropped = 0

    # ---- requests from the sync loop (never block)
    def status(
        self, key: Key, ips: tuple[str, ...], resource_version: str = "", take_over: bool = False
    ) -> None:
        """Asks for ``status.loadBalancer.ingress`` of ``key`` to become ``ips`` (ipMode VIP), if the
        Service is still at ``resource_version`` (when given); ``take_over``: it is that already, written
        by another field manager, and becomes ours (server-side apply)."""
        with self._cond:
            self._status[key] = (ips, resource_version, take_over)
            self._cond.notify()

    def drop_status(self) -> None:
        """Forgets the status writes not yet made (leadership was lost)."""
        with self._cond:
            self._status.clear()

    def event(
        self, key: Key, uid: str, kind: str, reason: str, message: str, involved: str = "Service"
    ) -> None:
        """Queues an Event about a Service (or, ``involved="Node"``, about the Node ``key[1]``). Normal ones
        pass a token bucket per object; Warnings are deduplicated later."""
        if kind == "Normal" and not self._take_token(key):
            self.dropped += 1
            return
        with self._cond:
            self._events.append((key, uid, kind, reason, message, involved))
            self._cond.notify()

    def _take_token(self, key: Key) -> bool:
        """A token from the Service's bucket and from the agent's: Normal Events never flood the API."""
        now = self.clock()
        if len(self._buckets) > 10000:  # forget Services whose buckets are full again
            self._buckets = {k: b for k, b in self._buckets.items() if b.level(now) < b.burst}
        bucket = self._buckets.setdefault(key, Bucket(NORMAL_EVENT_BURST, NORMAL_EVENT_REFILL, now))
        return bucket.level(now) >= 1 and self._global.take(now) and bucket.take(now)

    # ---- the writer thread
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="api-writer", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Status first, several at a time (it is what users wait for); Events when no status is pending."""
        with ThreadPoolExecutor(STATUS_WORKERS, thread_name_prefix="status") as pool:
            while not stop.is_set():
                with self._cond:
                    while not (self._status or self._events or stop.is_set()):
                        self._cond.wait(1.0)
                    status = self._status
                    self._status = {}
                    events = (
                        [] if status else [self._events.popleft() for _ in range(min(20, len(self._events)))]
                    )
                list(pool.map(lambda item: self._write_status(item[0], *item[1]), status.items()))
                for ev in events:
                    self._write_event(*ev)

    def _write_status(
        self, key: Key, ips: tuple[str, ...], resource_version: str, take_over: bool = False
    ) -> None:
        if not self.may_write():
            log.debug("not writing status of %s: not leading", fmt_key(key))
            return
        body: dict = {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ips]}}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        url = path(STATUS_PATH, ns=key[0], name=key[1])
        try:
            if take_over:
                meta = {"name": key[1], "namespace": key[0], **body.get("metadata", {})}
                self.api.apply(
                    url,
                    {"apiVersion": "v1", "kind": "Service", **body, "metadata": meta},
                    query={"fieldManager": self.field_manager, "force": "true"},
                )
            else:
                self.api.merge_patch(url, body, query={"fieldManager": self.field_manager})
            log.info(
                "%s %s for %s in status.loadBalancer.ingress",
                "took over" if take_over else "published",
                ", ".join(ips) or "nothing",
                fmt_key(key),
            )
        except ApiException as err:
            if err.status == 409:
                log.info("status of %s changed since the decision; deciding again", fmt_key(key))
                self.on_refused(key)
                return
            self._failed("patch services/status", err, key)
        except Exception as err:  # apiserver unreachable: the next event retries
            self.errors += 1
            log.warning("could not publish status of %s: %s", fmt_key(key), err)

    def _write_event(
        self, key: Key, uid: str, kind: str, reason: str, message: str, involved: str = "Service"
    ) -> None:
        now = self.clock()
        # Events about a Node (cluster-scoped) go in "default", as the kubelet's do.
        ns = key[0] or "default"
        seen_key = (key, reason, message)
        seen = self._seen.get(seen_key)
        try:
            if seen is not None and now - seen.last < EVENT_REPEAT_WINDOW:
                seen.count += 1
                seen.last = now
                if now - seen.written >= EVENT_PATCH_INTERVAL:
                    self.api.merge_patch(
                        path(EVENT_PATH, ns=ns, name=seen.name),
                        {"count": seen.count, "lastTimestamp": _now()},
                    )
                    seen.written = now
                return
            name = f"{key[1]}.{secrets.token_hex(8)}"
            stamp = _now()
            obj = {"apiVersion": "v1", "kind": involved, "name": key[1], "uid": uid}
            if key[0]:
                obj["namespace"] = key[0]
            self.api.post(
                path(EVENTS_PATH, ns=ns),
                {
                    "metadata": {"name": name, "namespace": ns},
                    "involvedObject": obj,
                    "type": kind,
                    "reason": reason,
                    "message": message,
                    "count": 1,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "source": {"component": COMPONENT, "host": self.node_name},
                    "reportingComponent": f"{COMPONENT}.io/agent",
                    "reportingInstance": self.node_name,
                },
            )
            self._seen[seen_key] = _Seen(name, 1, stamp, now, now)
            if len(self._seen) > 5000:
                self._seen = {k: v for k, v in self._seen.items() if now - v.last < EVENT_REPEAT_WINDOW}
        except ApiException as err:
            self._failed("create events", err, key)
        except Exception as err:  # apiserver unreachable: Events are best effort
            self.errors += 1
            log.debug("could not write event for %s: %s", fmt_key(key), err)

    def _failed(self, what: str, err: ApiException, key: Key) -> None:
        self.errors += 1
        if err.status == 404:
            return  # the Service is gone; its deletion event follows
        if err.status == 403:
            if what not in self._denied:
                self._denied.add(what)
                log.error(
                    "permission denied to %s (for %s): %s. Grant it to the agent's identity "
                    "(see deploy/rbac.yaml)",
                    what,
                    fmt_key(key),
                    api_message(err),
                )
            return
        log.warning("could not %s for %s: %s %s", what, fmt_key(key), err.status, api_message(err))
