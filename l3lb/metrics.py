"""Prometheus metrics and the health endpoints, served on one small HTTP server.

- ``/metrics``: the ``l3lb_*`` metrics below.
- ``/healthz``: 200 while the sync loop turns and no watch has gone without progress for too long.
- ``/readyz``: 200 once the initial sync is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, ...: read from /proc/self and /proc/stat
        # (which the unit must not hide: no ProcSubset=pid, nixos/service.nix).
        ProcessCollector(registry=r)
        self.addresses = Gauge(
            "l3lb_addresses", "Service addresses held on the interface.", ["family"], registry=r
        )
        self.announcements = Counter(
            "l3lb_announcements_total", "Addresses put on the interface, by reason.", ["reason"], registry=r
        )
        self.withdrawals = Counter(
            "l3lb_withdrawals_total",
            "Addresses removed from the interface, by reason.",
            ["reason"],
            registry=r,
        )
        self.reconcile = Histogram(
            "l3lb_reconcile_duration_seconds",
            "Duration of one sync (decide and apply): sync=changes, or sync=full (plans every address).",
            ["sync"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_apply = Histogram(
            "l3lb_event_to_apply_seconds",
            "From a watch or netlink event's arrival to the end of the sync it caused.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.watch_restarts = Counter(
            "l3lb_watch_restarts_total",
            "Watch restarts (errors, 410 relists), by resource.",
            ["resource"],
            registry=r,
        )
        self.api_errors = Counter(
            "l3lb_api_errors_total", "Failed API requests, by resource.", ["resource"], registry=r
        )
        self.weight = Gauge(
            "l3lb_address_weight",
            "Weighted anycast: the weight class of each address held on a weight-class interface.",
            ["ip"],
            registry=r,
        )
        self.moves = Counter(
            "l3lb_weight_moves_total",
            "Addresses moved to another weight-class interface (weighted anycast).",
            registry=r,
        )
        self.suppressed = Counter(
            "l3lb_suppressed_announcements_total",
            "Announcements the hold-down suppressed: the reason to announce went before the hold-down ended.",
            registry=r,
        )
        self.hold_down_until = Gauge(
            "l3lb_hold_down_until_seconds",
            "Unix time at which an address held down is announced if its reason lasts (while it waits).",
            ["ip"],
            registry=r,
        )
        self.drains = Counter(
            "l3lb_drains_total",
            "Addresses moved to the drain interface (GRACEFUL_SHUTDOWN) before their withdrawal, by reason.",
            ["reason"],
            registry=r,
        )
        self.drain_until = Gauge(
            "l3lb_drain_until_seconds",
            "Unix time at which a draining address is withdrawn (while it drains).",
            ["ip"],
            registry=r,
        )
        self.repairs = Counter(
            "l3lb_netlink_repairs_total",
            "Our addresses restored after someone else removed them.",
            registry=r,
        )
        self.conflicts = Counter(
            "l3lb_conflicts_total",
            "Bad input or conflicts reported as Warning Events, by reason.",
            ["reason"],
            registry=r,
        )
        self.leader = Gauge(
            "l3lb_allocator_leader", "1 while this agent leads the allocator, else 0.", registry=r
        )
        self.pools_mismatch = Gauge(
            "l3lb_pools_mismatch",
            "1 while the elected allocator's pools (fingerprint on its Lease) differ from this agent's.",
            registry=r,
        )
        self.allocations = Counter(
            "l3lb_allocations_total", "IPs written to Services' status by this agent as leader.", registry=r
        )
        self.condition_writes = Counter(
            "l3lb_condition_writes_total",
            "Writes of Services' conditions by this agent as leader, by outcome (written, conflict, ...).",
            ["outcome"],
            registry=r,
        )
        self.condition_backlog = Gauge(
            "l3lb_condition_backlog",
            "Services whose conditions this agent, as leader, has yet to write (paced, at most 20 a second).",
            registry=r,
        )
        self.last_sync = Gauge(
            "l3lb_last_sync_timestamp_seconds", "Unix time of the last successful sync.", registry=r
        )
        for family in ("ipv4", "ipv6"):
            self.addresses.labels(family)


class HealthServer:
    """Serves /metrics, /healthz and /readyz in a daemon thread."""

    def __init__(
        self,
        address: str,
        port: int,
        metrics: Metrics,
        healthy: Callable[[], str | None],
        ready: Callable[[], bool],
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    problem = healthy()
                    self._send(503 if problem else 200, (problem or "ok").encode() + b"\n")
                elif self.path == "/readyz":
                    ok = ready()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"initial sync not done\n")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
