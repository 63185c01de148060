"""Wiring of the daemon: the interface, the API client, the watches, the writer, the health server and
systemd notification around one Agent loop, the conditions worker while leading, and the orderly stop.

The node side starts first and never waits for the API: the agent adopts what is on the interface, tells
systemd it is ready, and keeps it (renewing lifetimes) while the API side connects in a thread of its own,
reading a kubeconfig that is not complete yet again until it is."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from .conditions.link import JOIN, Link
from .conditions.worker import Setup
from .config import Config
from .ipam.allocator import Allocator
from .ipam.pools import fingerprint
from .k8s.api import EX_TEMPFAIL, Api, KubeconfigStale, wait_for_client
from .k8s.events import EventRecorder
from .k8s.leader import LeaderElector
from .k8s.watch import Reflector, Sink
from .k8s.writer import StatusWriter
from .metrics import HealthServer, Metrics
from .model import SERVICES, WatchEvent, watched
from .netlink.tables import InterfaceMissing, MemoryTable, NetlinkTable
from .node.agent import Agent
from .systemd import Notifier

log = logging.getLogger(__name__)


class ApiSide:
    """What talks to the apiserver, started once the kubeconfig loads: the watches feeding the agent, and
    (unless dry-run) the writer, the allocator and the election."""

    def __init__(
        self,
        config: Config,
        agent: Agent,
        metrics: Metrics,
        lease_namespace: str,
        stop: threading.Event,
        log_setup: tuple[str, str] = ("info", "text"),
    ) -> None:
        self.config = config
        self.agent = agent
        self.metrics = metrics
        self.lease_namespace = lease_namespace
        self.stop = stop
        self.log_setup = log_setup
        """(level, format): the conditions worker logs as the agent does."""
        self.reflectors: list[Reflector] = []
        self.elector: LeaderElector | None = None
        self.allocator: Allocator | None = None
        self.conditions: Link | None = None
        self._conditions_thread: threading.Thread | None = None
        self.exit_code = 0
        """EX_TEMPFAIL when the kubeconfig copy is unusable: the daemon then exits for a restart."""

    def connect(self, kubeconfig: str | None) -> None:
        try:
            api_client = wait_for_client(kubeconfig, self.stop)
        except KubeconfigStale as err:
            log.error("%s", err)
            self.exit_code = EX_TEMPFAIL
            self.agent.stop(drain=False)
            return
        except Exception as err:
            log.error("cannot load the kubeconfig: %s", err)
            self.exit_code = 2
            self.agent.stop(drain=False)
            return
        if api_client is None:
            return  # stopping
        self.start(Api(api_client), kubeconfig)

    def start(self, api: Api, kubeconfig: str | None) -> None:
        """``kubeconfig``: what ``api`` was loaded from, which the conditions worker loads too."""
        config, agent, metrics = self.config, self.agent, self.metrics
        if not config.dry_run:
            # The allocator decides and the writer writes, only while the election says we lead.
            events = EventRecorder(api, config.node_name)
            writer = StatusWriter(api, lease_namespace=self.lease_namespace)
            allocator = Allocator(config, writer, events, metrics, lease_namespace=self.lease_namespace)
            writer.on_written = allocator.written
            # The conditions: while leading, a worker process of their own (l3lb/conditions/worker.py)
            # is handed each Service and the allocator's decision for it.
            level, fmt = self.log_setup
            setup = Setup(config, kubeconfig, self.lease_namespace, level, fmt)
            conditions = Link(setup, metrics, lambda: elector.valid_until)
            allocator.on_assigned = conditions.on_assigned

            def on_leader(leader: bool) -> None:
                metrics.leader.set(1 if leader else 0)
                allocator.on_leader(leader)
                conditions.on_leader(leader)

            mine = fingerprint(config.pools)
            reported: list[tuple[str, str]] = []

            def on_holder(holder: str, theirs: str) -> None:
                """The allocator's pools against ours: said once per (holder, fingerprint), in the log, a
                metric and an Event on our Node."""
                mismatch = bool(theirs) and theirs != mine
                metrics.pools_mismatch.set(1 if mismatch else 0)
                if not mismatch or reported[-1:] == [(holder, theirs)]:
                    return
                reported.append((holder, theirs))
                message = (
                    f"the elected allocator ({holder}) runs pools with fingerprint {theirs}, this agent "
                    f"{mine}: they disagree on which Service gets which IP or which node announces it. Give "
                    "every agent the same --config (or --prefix/--reserve)"
                )
                log.warning("%s", message)
                events.event(
                    ("", config.node_name), config.node_name, "Warning", "PoolsMismatch", message, "Node"
                )

            self.elector = elector = LeaderElector(
                api, self.lease_namespace, config.node_name, on_leader, fingerprint=mine, on_holder=on_holder
            )
            writer.may_write = self.elector.is_leader
            agent.report.events = events
            self.allocator = allocator
            self.conditions = conditions
            events.start(self.stop)
            writer.start(self.stop)
            allocator.start(self.stop)
            self._conditions_thread = conditions.start(self.stop)
            self.elector.start(self.stop)
        else:  # decide as a leader would and log it (l3lb/ipam/dryrun.py)
            from .ipam.dryrun import DryRunWriter

            dry = DryRunWriter()
            self.allocator = Allocator(config, dry, dry, metrics, lease_namespace=self.lease_namespace)
            self.allocator.start(self.stop)
            self.allocator.on_leader(True)

        def on_restart(resource: str, err: Exception | None) -> None:
            metrics.watch_restarts.labels(resource).inc()
            if err is not None:
                metrics.api_errors.labels(resource).inc()

        self.reflectors = [
            Reflector(resource, api, path, parse, self.sink(resource), selectors=sel, on_restart=on_restart)
            for resource, (path, sel, parse) in watched(config.node_name).items()
        ]
        agent.watched = self.reflectors
        for r in self.reflectors:
            r.start(self.stop)

    def sink(self, resource: str) -> Sink:
        """Where a watch delivers: the agent's inbox, and for Services the allocator's as well (one event,
        parsed once, for both)."""
        agent, allocator = self.agent, self.allocator
        if resource != SERVICES or allocator is None:
            return agent.sink

        def both(resource: str, kind: str, value: Any) -> None:
            event = WatchEvent(resource, kind, value, agent.clock())
            agent.inbox.put(event)
            allocator.offer(event)

        return both

    def close(self) -> None:
        """After ``stop`` is set: the conditions worker ends first (nothing written after the Lease goes)."""
        if self.conditions is not None and self._conditions_thread is not None:
            self.conditions.wake()
            self._conditions_thread.join(JOIN + 1)
        if self.elector is not None:
            self.elector.release()
        for r in self.reflectors:
            r.stop()


def serve(
    config: Config,
    kubeconfig: str | None,
    listen: tuple[str, int] | None,
    lease_namespace: str = "kube-system",
    received: list[int] | None = None,
    log_setup: tuple[str, str] = ("info", "text"),
) -> None:
    """Runs the agent until SIGTERM or SIGINT. ``received``: signals that arrived before (while loading).
    Exits with EX_TEMPFAIL, keeping the addresses, when the kubeconfig credential cannot be used."""
    try:
        interfaces = (config.interface, *config.extra_interfaces)
        table = (
            MemoryTable(interfaces=interfaces)
            if config.dry_run
            else NetlinkTable(config.interface, config.extra_interfaces)
        )
    except InterfaceMissing as err:
        raise click.ClickException(f"{err}; pass --interface with an existing one") from None
    metrics = Metrics()
    agent = Agent(config, table, metrics=metrics, notifier=Notifier())
    stop = threading.Event()

    received = received if received is not None else []

    def on_signal(signum: int, frame: object) -> None:
        # No logging and no lock here (logging takes one): the signal must not deadlock what it interrupts.
        received.append(signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if received:
        agent.stop()

    health = None
    if listen is not None:
        try:
            health = HealthServer(*listen, metrics, agent.health, lambda: agent.ready)
        except OSError as err:
            raise click.ClickException(
                f"cannot listen on {listen[0]}:{listen[1]} for metrics: {err}"
            ) from None
        health.start()
        log.info("metrics and health on http://%s:%d/ (metrics, healthz, readyz)", listen[0], health.port)
    api_side = ApiSide(config, agent, metrics, lease_namespace, stop, log_setup)
    threading.Thread(target=api_side.connect, args=(kubeconfig,), name="api-connect", daemon=True).start()
    agent.run()
    log.info("received %s, stopping", " and ".join(signal.Signals(n).name for n in received) or "stop")
    stop.set()
    # Routes first (they carry traffic), then the Lease (a successor then takes over in seconds).
    if config.keep_on_exit or config.dry_run or api_side.exit_code:
        log.info("leaving the addresses in place")
    else:
        agent.withdraw_all()
    api_side.close()
    if health is not None:
        health.close()
    table.close()
    log.info("stopped")
    if api_side.exit_code:
        raise SystemExit(api_side.exit_code)
