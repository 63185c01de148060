"""List-then-watch loops, one thread per resource, delivering plain JSON objects to a sink.

What the Python client's own Watch and SharedInformer lack, done here: resume from the last
resourceVersion, bookmarks, a full relist only on 410 Gone, server-side watch timeouts plus a client read
timeout (so a dead connection cannot hang a watch), and exponential backoff with jitter (no tight loop while
the apiserver is down). Objects are parsed from the wire as JSON, never into client model classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ..backoff import Backoff
from ..model import Parse
from .api import Api, api_message, pages

log = logging.getLogger(__name__)

Sink = Callable[[str, str, Any], None]
"""Receives (resource, "REPLACE", [(key, value), ...]) after each (re)list,
then (resource, "SET" | "DELETE", (key, value)) per event; a DELETE's value is the object's last state."""


class Gone(Exception):
    """The resourceVersion to resume from is too old (410): relist."""


class Reflector:
    """Keeps one resource (a collection path with selectors) flowing into ``sink`` as parsed values."""

    def __init__(
        self,
        resource: str,
        api: Api,
        url_path: str,
        parse: Parse,
        sink: Sink,
        *,
        selectors: dict[str, str] | None = None,
        watch_timeout: tuple[int, int] = (60, 120),
        connect_timeout: float = 5.0,
        backoff: Backoff | None = None,
        on_restart: Callable[[str, Exception | None], None] | None = None,
    ) -> None:
        self.resource = resource
        self.api = api
        self.url_path = url_path
        self.parse = parse
        self.sink = sink
        self.selectors = dict(selectors or {})
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        # Capped at 3 s, not client-go's 30: while a watch is down the agent is blind to endpoint changes,
        # so after an apiserver restart it must be back within seconds (a refused connect costs nothing).
        self.backoff = backoff or Backoff(initial=0.25, maximum=3.0)
        self.on_restart = on_restart
        """Called on every restart of the loop, with the error (None for a 410 relist): for metrics."""
        self.resource_version: str | None = None
        self.last_progress = time.monotonic()
        """When the loop last heard from the apiserver or finished a backoff: for /healthz."""
        self._response: Any = None

    @property
    def stuck_after(self) -> float:
        """Seconds without progress after which the loop counts as stuck: longer than any healthy silence."""
        return self.watch_timeout[1] + 15 + self.backoff.maximum + 30

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name=f"watch-{self.resource}", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch(stop)
                self.backoff.reset()
            except Gone:
                log.info("%s: resourceVersion %s is gone, relisting", self.resource, self.resource_version)
                self.resource_version = None
                if self.on_restart is not None:
                    self.on_restart(self.resource, None)
            except Exception as err:  # any failure: report, back off, retry
                self._report(err)
                if isinstance(err, ApiException) and err.status == 410:
                    self.resource_version = None
                delay = self.backoff.next()
                stop.wait(delay)
                self.last_progress = time.monotonic()

    def stop(self) -> None:
        """Unblocks a running watch (closing its connection); the thread then sees ``stop`` and ends."""
        resp = self._response
        if resp is not None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                resp.shutdown()

    def _report(self, err: Exception) -> None:
        if self.on_restart is not None:
            self.on_restart(self.resource, err)
        if isinstance(err, ApiException) and err.status == 403:
            log.error(
                "%s: permission denied: %s. Grant the agent's identity list and watch on %s "
                "(see deploy/rbac.yaml)",
                self.resource,
                api_message(err),
                self.resource,
            )
        elif isinstance(err, ApiException):
            log.warning("%s: API error %s: %s; retrying", self.resource, err.status, api_message(err))
        else:
            log.warning("%s: cannot reach the apiserver (%s); retrying", self.resource, type(err).__name__)

    def _list(self) -> None:
        values = []
        for page in pages(self.api, self.url_path, self.selectors, timeout=(self.connect_timeout, 60)):
            values.extend(v for v in map(self._parse, page.get("items") or []) if v is not None)
        self.resource_version = page["metadata"]["resourceVersion"]
        self.last_progress = time.monotonic()
        self.sink(self.resource, "REPLACE", values)

    def _watch(self, stop: threading.Event) -> None:
        timeout = random.randint(*self.watch_timeout)
        query = {
            **self.selectors,
            "watch": "true",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        resp = self.api.request(
            "GET", self.url_path, query=query, timeout=(self.connect_timeout, timeout + 15)
        )
        self._response = resp
        self.last_progress = time.monotonic()
        try:
            for line in iter_resp_lines(resp):
                if stop.is_set():
                    return
                self._event(json.loads(line))
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, AttributeError):
            if stop.is_set():
                return
            raise
        finally:
            self._response = None
            resp.release_conn()

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        self.last_progress = time.monotonic()
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            err = ApiException(status=obj.get("code"), reason=obj.get("message"))
            err.body = json.dumps(obj)
            raise err
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            value = self._parse(obj)
            if value is not None:
                self.sink(self.resource, "DELETE" if kind == "DELETED" else "SET", value)

    def _parse(self, obj: dict[str, Any]) -> Any:
        """The parsed value, or None for an object that cannot be parsed: it is skipped with an error, so
        one bad object never stalls the watch (retrying would only meet it again)."""
        try:
            return self.parse(obj)
        except Exception as err:
            meta = obj.get("metadata") or {} if isinstance(obj, dict) else {}
            log.error(
                "%s: skipping %s/%s, which cannot be parsed: %s: %s",
                self.resource,
                meta.get("namespace", ""),
                meta.get("name", "?"),
                type(err).__name__,
                err,
            )
            return None
