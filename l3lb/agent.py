"""The agent's loop: watch events in, one sync out. The sync is the only writer to the interface.

Watch threads and the netlink monitor only put messages on one queue. The loop drains the queue (so a
burst of events costs one sync), records each message in the tracker, and syncs once the Services,
EndpointSlices and this Node have each been listed at least once: never act on half a picture. A periodic
resync re-reads the interface, renews address lifetimes and collects strays; a failed sync is retried.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .apply import AddressTable, NetlinkTable, Plan, Present, plan
from .config import Config
from .decide import NOT_WANTED
from .model import Key, fmt_key
from .tracker import Tracker

log = logging.getLogger(__name__)

SERVICES, SLICES, NODE = "services", "endpointslices", "node"
RETRY_INTERVAL = 1.0


class Agent:
    def __init__(
        self,
        config: Config,
        table: AddressTable,
        *,
        writer: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.table = table
        self.writer = writer
        self.clock = clock
        self.tracker = Tracker(config)
        self.queue: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.synced: set[str] = set()
        self.present: dict[str, Present] = {}
        self.held: set[str] = set()
        """IPs this agent put on or adopted and still wants: re-adding one is a repair."""
        self.repairs = 0
        self.sync_count = 0
        self._needs_sync = False
        self._needs_dump = True
        self._next_resync = 0.0
        self._warned: dict[Key, tuple[str, ...]] = {}

    @property
    def resync_interval(self) -> float:
        return min(10.0, self.config.renew_after / 2) if self.config.address_lifetime else 10.0

    @property
    def ready(self) -> bool:
        return len(self.synced) == 3 and self.sync_count > 0

    # ---- inputs (called from other threads)
    def sink(self, resource: str, kind: str, obj: Any) -> None:
        self.queue.put((resource, kind, obj))

    def on_netlink(self, kind: str, ip: str, present: Present | None) -> None:
        self.queue.put(("netlink", kind, (ip, present)))

    def stop(self, stop: threading.Event) -> None:
        """Ends ``run()`` now (from a signal handler): sets ``stop`` and wakes the loop."""
        stop.set()
        self.queue.put(("stop", "", None))

    # ---- the loop
    def run(self, stop: threading.Event) -> None:
        if isinstance(self.table, NetlinkTable):
            self.table.monitor(self.on_netlink)
        while not stop.is_set():
            timeout = max(0.0, self._next_resync - self.clock())
            try:
                item = self.queue.get(timeout=min(timeout, 0.5))
            except queue.Empty:
                pass
            else:
                self._record(*item)
                while True:
                    try:
                        self._record(*self.queue.get_nowait())
                    except queue.Empty:
                        break
            if stop.is_set():
                break
            now = self.clock()
            if now >= self._next_resync:
                self._needs_dump = True
                self._needs_sync = True
            if self._needs_sync or self.tracker.pending:
                self.sync()

    def _record(self, resource: str, kind: str, obj: Any) -> None:
        t = self.tracker
        if resource == "stop":
            return
        if resource == "netlink":
            ip, present = obj
            if kind == "resync":
                self._needs_dump = self._needs_sync = True
            elif kind == "del":
                if self.present.pop(ip, None) is not None and ip in t.announced:
                    self._needs_sync = True
            elif kind == "add" and present is not None:
                self.present[ip] = present
                if ip not in t.announced and self.config.in_prefix(ip):
                    self._needs_sync = True  # a stray: collect it
            return
        if kind == "REPLACE":
            if resource == SERVICES:
                t.replace_services(obj)
            elif resource == SLICES:
                t.replace_slices(obj)
            else:
                t.set_node(obj[0][1] if obj else None)
            if resource not in self.synced:
                log.info("initial list of %s done (%d objects)", resource, len(obj))
            self.synced.add(resource)
        elif resource == SERVICES:
            t.delete_service(obj) if kind == "DELETE" else t.set_service(obj[1])
        elif resource == SLICES:
            t.delete_slice(obj) if kind == "DELETE" else t.set_slice(*obj)
        elif resource == NODE:
            t.set_node(None if kind == "DELETE" else obj[1])

    def sync(self) -> None:
        """Brings the interface to the decision. Before the first full picture, only renews what is there."""
        now = self.clock()
        self._next_resync = now + self.resync_interval
        self._needs_sync = False
        try:
            if self._needs_dump:
                self.present = self.table.dump()
                self._needs_dump = False
            if len(self.synced) < 3:
                # No full picture yet (start-up, or the apiserver is unreachable): keep what is there.
                self._apply(
                    plan(
                        {ip for ip in self.present if self.config.in_prefix(ip)},
                        self.present,
                        self.config,
                        now,
                    )
                )
                return
            examined = self.tracker.update()
            wanted = self.tracker.announced
            if self.sync_count == 0:
                for ip in sorted(wanted & self.present.keys()):
                    log.info("adopting %s%s; already on the interface", ip, self._why(ip))
            self._apply(plan(wanted, self.present, self.config, now))
            self.held = wanted & self.present.keys()
            self.sync_count += 1
        except Exception:
            log.exception("sync failed; retrying in %.0fs", RETRY_INTERVAL)
            self._needs_dump = True
            self._next_resync = now + RETRY_INTERVAL
            return
        for key in examined:
            self._publish(key)

    def _apply(self, p: Plan) -> None:
        lifetime = self.config.address_lifetime
        for ip in p.add + p.renew:
            self.table.set(ip, lifetime)
            self.present[ip] = Present(self.clock() + lifetime if lifetime else None)
        for ip in p.add:
            if ip in self.held:
                self.repairs += 1
                log.warning("restoring %s%s; it was removed by someone else", ip, self._why(ip))
            else:
                log.info("assuming %s%s", ip, self._why(ip))
        for ip in p.remove:
            self.table.remove(ip)
            self.present.pop(ip, None)
            if ip in self.held:
                log.info("forfeiting %s%s", ip, self._why(ip))
            else:
                log.info("collecting stray %s: no Service of ours wants it", ip)

    def _why(self, ip: str) -> str:
        d = self.tracker.explain(ip)
        if d is not None:
            key = next(
                (k for k in d.services if self.tracker.decisions[k].announce == d.announce), d.services[0]
            )
            return f" for {fmt_key(key)}: {d.detail}"
        gone = self.tracker.released.get(ip)
        if gone is not None:
            return f" for {fmt_key(gone)}: {NOT_WANTED} (the Service is gone, not ours, or has another IP)"
        return ""

    def _publish(self, key: Key) -> None:
        """Publishes requested in-prefix IPs to status and warns about IPs we will never announce."""
        svc = self.tracker.services.get(key)
        if svc is None:
            self._warned.pop(key, None)
            return
        warnings = []
        if svc.request_error:
            warnings.append(("InvalidLoadBalancerIPs", f"malformed request: {svc.request_error}"))
        inside = tuple(ip for ip in svc.requested_ips if self.config.in_prefix(ip))
        prefixes = ", ".join(str(p) for p in self.config.prefixes)
        for ip in sorted(set(svc.requested_ips + svc.ingress_ips) - set(inside)):
            if not self.config.in_prefix(ip):
                warnings.append(
                    (
                        "IPOutsidePrefix",
                        f"{ip} is outside every l3lb prefix ({prefixes}); it is not announced",
                    )
                )
        signature = tuple(m for _, m in warnings)
        if signature and self._warned.get(key) != signature:
            for reason, message in warnings:
                log.warning("%s: %s", fmt_key(key), message)
                if self.writer is not None:
                    self.writer.event(key, svc.uid, "Warning", reason, message)
        self._warned[key] = signature
        if inside and inside != svc.ingress_ips:
            if self.writer is not None:
                self.writer.status(key, inside)
            else:
                log.info("would publish %s for %s (dry run)", ", ".join(inside), fmt_key(key))

    def withdraw_all(self) -> None:
        """On exit: removes every host-length address of ours (inside the prefixes) from the interface."""
        try:
            present = self.table.dump()
        except Exception:
            log.exception("could not read the interface to withdraw")
            return
        for ip in sorted(present):
            if self.config.in_prefix(ip):
                try:
                    self.table.remove(ip)
                    log.info("withdrawing %s: the agent is stopping", ip)
                except Exception:
                    log.exception("could not withdraw %s", ip)
