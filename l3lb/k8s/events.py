"""Kubernetes Events, recorded from any thread and written by one background thread: the agent's loop, the
allocator and the election record them concurrently, and none of them ever waits on the apiserver.

Normal Events pass two token buckets (one per object, one for the agent), so a flapping input can never
flood the API; Warnings always pass, and repeats of any Event are aggregated: a repeat within ten minutes
bumps ``count``, written at most once a minute.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client.rest import ApiException

from ..model import Key, fmt_key
from .api import Api, api_message, path

log = logging.getLogger(__name__)

COMPONENT = "l3lb"
EVENT_REPEAT_WINDOW = 600.0
EVENT_PATCH_INTERVAL = 60.0
NORMAL_EVENT_BURST = 5
NORMAL_EVENT_REFILL = 30.0  # seconds per token: a flapping Service gets at most 2 Normal Events a minute
AGENT_EVENT_BURST = 10
AGENT_EVENT_REFILL = 2.0  # and one agent at most 30 a minute in all
QUEUE = 1000
"""Events waiting to be written at most; beyond that the oldest are dropped (the apiserver is away)."""
EVENTS_PATH = "/api/v1/namespaces/{ns}/events"
EVENT_PATH = "/api/v1/namespaces/{ns}/events/{name}"


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


@dataclass(frozen=True, slots=True)
class Event:
    key: Key
    uid: str
    kind: str
    reason: str
    message: str
    involved: str = "Service"


@dataclass
class _Seen:
    name: str
    count: int
    first: str
    written: float
    last: float


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, api: Api, node_name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.node_name = node_name
        self.clock = clock
        self._cond = threading.Condition()
        """Guards the queue, the buckets and ``dropped``: ``event()`` is called from several threads."""
        self._queue: deque[Event] = deque()
        self._buckets: dict[Key, Bucket] = {}
        self._global = Bucket(AGENT_EVENT_BURST, AGENT_EVENT_REFILL, clock())
        self._seen: dict[tuple[Key, str, str], _Seen] = {}
        """Only the writer thread reads and writes this."""
        self._denied = False
        self.dropped = 0
        self.errors = 0

    def event(
        self, key: Key, uid: str, kind: str, reason: str, message: str, involved: str = "Service"
    ) -> bool:
        """Queues an Event about a Service (or, ``involved="Node"``, about the Node ``key[1]``); False when
        a Normal one is dropped by its rate limits. Never blocks on the API."""
        with self._cond:
            if kind == "Normal" and not self._take_token(key):
                self.dropped += 1
                return False
            if len(self._queue) >= QUEUE:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(Event(key, uid, kind, reason, message, involved))
            self._cond.notify()
            return True

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def _take_token(self, key: Key) -> bool:
        """A token from the object's bucket and from the agent's (the caller holds the lock)."""
        now = self.clock()
        if len(self._buckets) > 10000:  # forget objects whose buckets are full again
            self._buckets = {k: b for k, b in self._buckets.items() if b.level(now) < b.burst}
        bucket = self._buckets.setdefault(key, Bucket(NORMAL_EVENT_BURST, NORMAL_EVENT_REFILL, now))
        return bucket.level(now) >= 1 and self._global.take(now) and bucket.take(now)

    # ---- the writer thread
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="events", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._cond:
                while not (self._queue or stop.is_set()):
                    self._cond.wait(1.0)
                batch = [self._queue.popleft() for _ in range(min(20, len(self._queue)))]
            for e in batch:
                self.write(e)

    def write(self, e: Event) -> None:
        """Posts ``e``, or for a repeat within EVENT_REPEAT_WINDOW bumps the count of the one posted."""
        now = self.clock()
        ns = e.key[0] or "default"  # Events about a Node (cluster-scoped) go in "default", as the kubelet's
        seen_key = (e.key, e.reason, e.message)
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
            name = f"{e.key[1]}.{secrets.token_hex(8)}"
            stamp = _now()
            obj = {"apiVersion": "v1", "kind": e.involved, "name": e.key[1], "uid": e.uid}
            if e.key[0]:
                obj["namespace"] = e.key[0]
            self.api.post(
                path(EVENTS_PATH, ns=ns),
                {
                    "metadata": {"name": name, "namespace": ns},
                    "involvedObject": obj,
                    "type": e.kind,
                    "reason": e.reason,
                    "message": e.message,
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
            self.errors += 1
            if err.status == 403 and not self._denied:
                self._denied = True
                log.error(
                    "permission denied to create events (for %s): %s. Grant it to the agent's identity "
                    "(see deploy/rbac.yaml)",
                    fmt_key(e.key),
                    api_message(err),
                )
            elif err.status not in (403, 404):
                log.warning(
                    "could not write an event for %s: %s %s", fmt_key(e.key), err.status, api_message(err)
                )
        except Exception as err:  # apiserver unreachable: Events are best effort
            self.errors += 1
            log.debug("could not write an event for %s: %s", fmt_key(e.key), err)
