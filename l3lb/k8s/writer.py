"""The allocator's status writes (``status.loadBalancer.ingress`` of Services), made by a background thread so
that the allocator never waits on the apiserver; the latest request per Service wins.

Each write is a merge patch conditional on the resourceVersion it was decided on, made as field manager
``l3lb/<lease namespace>`` (so managedFields say which group of agents wrote it), and only while
``may_write()`` (the election: we lead). A takeover (status another controller wrote, kept as it is) is a
server-side apply of the same value instead: a merge patch that changes nothing changes no ownership
either, while an apply makes our field manager an owner of it. How each write went is told back
(``on_written``): the allocator, not the writer, decides what to do about a conflict or a failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kubernetes.client.rest import ApiException

from ..model import Key, field_manager, fmt_key
from .api import Api, api_message, path

log = logging.getLogger(__name__)

STATUS_PATH = "/api/v1/namespaces/{ns}/services/{name}/status"
WORKERS = 2
# How a write went:
WRITTEN = "written"
CONFLICT = "conflict"
"""409: the Service changed since the decision; the watch brings the new version."""
FAILED = "failed"
"""The apiserver could not be reached, or answered 5xx or 429: worth another try."""
DENIED = "denied"
"""403: the identity may not patch services/status (RBAC may still come)."""
GONE = "gone"
"""404: the Service is gone; its deletion event follows."""
NOT_LEADING = "not leading"

Written = Callable[[Key, str, str], None]
"""Told (key, outcome, resourceVersion the write was conditional on), from the writer's threads."""


class StatusWriter:
    def __init__(
        self,
        api: Api,
        *,
        may_write: Callable[[], bool] = lambda: True,
        on_written: Written = lambda key, outcome, version: None,
        lease_namespace: str = "kube-system",
    ) -> None:
        self.api = api
        self.field_manager = field_manager(lease_namespace)
        self.may_write = may_write
        self.on_written = on_written
        self._cond = threading.Condition()
        self._pending: dict[Key, tuple[tuple[str, ...], str, bool]] = {}
        self._denied = False

    # ---- requests (never block)
    def write(
        self, key: Key, ips: tuple[str, ...], resource_version: str = "", take_over: bool = False
    ) -> None:
        """Asks for ``status.loadBalancer.ingress`` of ``key`` to become ``ips`` (ipMode VIP), if the
        Service is still at ``resource_version`` (when given); ``take_over``: it is that already, written
        by another field manager, and becomes ours (server-side apply)."""
        with self._cond:
            self._pending[key] = (ips, resource_version, take_over)
            self._cond.notify()

    def drop(self) -> None:
        """Forgets the writes not yet made (leadership was lost)."""
        with self._cond:
            self._pending.clear()

    # ---- the writer thread
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="status-writer", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Several writes at a time: they are what users wait for (EXTERNAL-IP)."""
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="status") as pool:
            while not stop.is_set():
                with self._cond:
                    while not (self._pending or stop.is_set()):
                        self._cond.wait(1.0)
                    pending, self._pending = self._pending, {}
                list(pool.map(lambda item: self.write_now(item[0], *item[1]), pending.items()))

    def write_now(
        self, key: Key, ips: tuple[str, ...], resource_version: str, take_over: bool = False
    ) -> str:
        """One write; returns how it went (and tells ``on_written``)."""
        outcome = self._patch(key, ips, resource_version, take_over)
        self.on_written(key, outcome, resource_version)
        return outcome

    def _patch(self, key: Key, ips: tuple[str, ...], resource_version: str, take_over: bool) -> str:
        if not self.may_write():
            log.debug("not writing status of %s: not leading", fmt_key(key))
            return NOT_LEADING
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
        except ApiException as err:
            if err.status == 409:
                log.info("status of %s changed since the decision; deciding again", fmt_key(key))
                return CONFLICT
            if err.status == 404:
                return GONE
            if err.status == 403:
                if not self._denied:
                    self._denied = True
                    log.error(
                        "permission denied to patch services/status (for %s): %s. Grant it to the agent's "
                        "identity (see deploy/rbac.yaml)",
                        fmt_key(key),
                        api_message(err),
                    )
                return DENIED
            log.warning("could not publish status of %s: %s %s", fmt_key(key), err.status, api_message(err))
            return FAILED
        except Exception as err:  # the apiserver cannot be reached
            log.warning("could not publish status of %s: %s", fmt_key(key), err)
            return FAILED
        done = "took over" if take_over else "published"
        log.info(
            "%s %s for %s in status.loadBalancer.ingress", done, ", ".join(ips) or "nothing", fmt_key(key)
        )
        return WRITTEN
