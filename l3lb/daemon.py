"""Wiring of the daemon: the interface, the API client, the watches, the writer, the health server and
systemd notification around one Agent loop, and the orderly stop."""

from __future__ import annotations

import logging
import signal
import threading

import click

from .agent import Agent
from .allocator import Allocator
from .apply import InterfaceMissing, MemoryTable, NetlinkTable
from .config import Config
from .kube import Api, load_client
from .leader import LeaderElector
from .metrics import HealthServer, Metrics
from .model import watched
from .pools import fingerprint
from .systemd import Notifier
from .watch import Reflector
from .writer import Writer

log = logging.getLogger(__name__)


def serve(
    config: Config,
    kubeconfig: str | None,
    listen: tuple[str, int] | None,
    lease_namespace: str = "kube-system",
    received: list[int] | None = None,
) -> None:
    """Runs the agent until SIGTERM or SIGINT. ``received``: signals that arrived before (while loading)."""
    try:
        interfaces = (config.interface, *config.class_interfaces)
        table = (
            MemoryTable(interfaces=interfaces)
            if config.dry_run
            else NetlinkTable(config.interface, config.class_interfaces)
        )
    except InterfaceMissing as err:
        raise click.ClickException(f"{err}; pass --interface with an existing one") from None
    api = Api(load_client(kubeconfig))
    metrics = Metrics()
    writer = allocator = elector = None
    if not config.dry_run:
        # The allocator decides and the writer writes, only while the election says we lead.
        writer = Writer(api, config.node_name, lease_namespace=lease_namespace)
        allocator = Allocator(config, writer, metrics, lease_namespace=lease_namespace)
        writer.on_refused = allocator.retry

        def on_leader(leader: bool) -> None:
            metrics.leader.set(1 if leader else 0)
            assert allocator is not None
            allocator.on_leader(leader)

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
                f"the elected allocator ({holder}) runs pools with fingerprint {theirs}, this agent {mine}: "
                "they disagree on which Service gets which IP or which node announces it. Give every agent "
                "the same --config (or --prefix/--reserve)"
            )
            log.warning("%s", message)
            assert writer is not None
            writer.event(
                ("", config.node_name), config.node_name, "Warning", "PoolsMismatch", message, "Node"
            )

        elector = LeaderElector(
            api, lease_namespace, config.node_name, on_leader, fingerprint=mine, on_holder=on_holder
        )
        writer.may_write = elector.is_leader
    agent = Agent(config, table, writer=writer, metrics=metrics, notifier=Notifier(), allocator=allocator)
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

    def on_restart(resource: str, err: Exception | None) -> None:
        metrics.watch_restarts.labels(resource).inc()
        if err is not None:
            metrics.api_errors.labels(resource).inc()

    reflectors = [
        Reflector(resource, api, path, parse, agent.sink, selectors=selectors, on_restart=on_restart)
        for resource, (path, selectors, parse) in watched(config.node_name).items()
    ]
    agent.watched = reflectors
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
    for r in reflectors:
        r.start(stop)
    if writer is not None and allocator is not None and elector is not None:
        writer.start(stop)
        allocator.start(stop)
        elector.start(stop)
    agent.run()
    log.info("received %s, stopping", " and ".join(signal.Signals(n).name for n in received) or "stop")
    stop.set()
    # Routes first (they carry traffic), then the Lease (a successor then takes over in seconds).
    if config.keep_on_exit or config.dry_run:
        log.info("leaving the addresses in place")
    else:
        agent.withdraw_all()
    if elector is not None:
        elector.release()
    for r in reflectors:
        r.stop()
    if health is not None:
        health.close()
    table.close()
    log.info("stopped")
