"""The conditions worker: the leader's keeper of Service conditions (``keeper.py``), its paced writer, its
Event recorder and its two watches (every Node; every EndpointSlice with its ready endpoints per node), in a
process of their own that the agent starts when a term starts and stops when it ends (``link.py``).

Why a process: the JSON of every slice event a second time, every node's decision and one write (and its
answer) per changed condition are Python work, and in the agent's process they would take the interpreter
(the GIL) from its loop, whose event path must be the same on the leader as on every other node.

What the agent sends (``Link``), in order: ``("assigned", part, everything, last)``, the allocator's hand-over
in parts of at most ``link.CHUNK`` Services (a hand-over of every Service is given to the keeper whole, once
its last part is here);
``("lease", until)``, the monotonic time this term lasts until unless renewed (CLOCK_MONOTONIC is one
clock for every process of the machine), checked before every write as the agent checks its own status
writes; ``("stop",)``, after which nothing more is written. The end of the connection (the agent gone)
stops it too. What it sends back: ``("written", outcome)`` for each write and ``("backlog", pending)`` when
that changes, for the agent's metrics; its log lines go to the agent's stderr.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..config import Config
from ..k8s.api import Api, wait_for_client
from ..k8s.conditions import ConditionWriter
from ..k8s.events import EventRecorder
from ..k8s.watch import Reflector, Sink
from ..model import SLICES, Key, node_entry, slice_by_node_entry, watched
from ..node.cluster import NODES, SLICES_BY_NODE
from .keeper import Keeper

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Setup:
    """What the worker is started with (pickled to the new process)."""

    config: Config
    kubeconfig: str | None
    lease_namespace: str
    log_level: str
    log_format: str


class Parts:
    """Puts the parts of each hand-over together: a part of a hand-over of changes goes to the keeper as it
    comes, a hand-over of every Service (``everything``) once its last part is here."""

    def __init__(self) -> None:
        self._every: dict[Key, Any] = {}

    def add(self, part: dict[Key, Any], everything: bool, last: bool) -> tuple[dict[Key, Any], bool] | None:
        """What to give the keeper's ``on_assigned`` now, if anything."""
        if not everything:
            return part, False
        self._every.update(part)
        if not last:
            return None
        whole, self._every = self._every, {}
        return whole, True


class Reporter:
    """The keeper's ``Tally``: each write and each change of the backlog, sent to the agent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._pending = -1

    def written(self, outcome: str) -> None:
        self._send(("written", outcome))

    def backlog(self, pending: int) -> None:
        if pending != self._pending:
            self._pending = pending
            self._send(("backlog", pending))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._lock:
                self.conn.send(message)
        except OSError:
            pass  # the agent is gone: the receiving end sees the connection end and stops us


def watches(api: Api, config: Config) -> Callable[[Sink], Callable[[], None]]:
    """The keeper's ``start_watches``: every Node, and every EndpointSlice with its ready endpoints per
    node, delivering to the keeper's sink; returns what stops them."""
    slices, selectors = watched(config.node_name)[SLICES][:2]

    def start(sink: Sink) -> Callable[[], None]:
        term = threading.Event()
        reflectors = [
            Reflector(NODES, api, "/api/v1/nodes", node_entry, sink),
            Reflector(SLICES_BY_NODE, api, slices, slice_by_node_entry, sink, selectors=selectors),
        ]
        for r in reflectors:
            r.start(term)

        def stop() -> None:
            term.set()
            for r in reflectors:
                r.stop()

        return stop

    return start


class Terminated(Exception):
    """SIGTERM arrived (raised in the main thread, out of its wait for the agent's next message)."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(setup: Setup, conn: Connection) -> None:
    """The worker process's entry point: runs until told to stop or the agent's end of ``conn`` closes."""
    from ..cli.logs import setup_logging

    # A ^C in a terminal reaches the whole process group: it is the agent's, which drains (still leading)
    # and then stops us. A SIGTERM to us alone stops us as "stop" does (the unit's KillMode=mixed sends
    # systemd's to the agent only).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminated)
    setup_logging(setup.log_level, setup.log_format)
    stop = threading.Event()
    until = [0.0]
    try:
        api_client = wait_for_client(setup.kubeconfig, stop)
    except Exception as err:
        log.error("conditions worker: cannot load the kubeconfig: %s", err)
        raise SystemExit(2) from None
    assert api_client is not None  # stop is not set yet
    api = Api(api_client)
    events = EventRecorder(api, setup.config.node_name)
    writer = ConditionWriter(
        api,
        lease_namespace=setup.lease_namespace,
        may_write=lambda: not stop.is_set() and time.monotonic() < until[0],
    )
    keeper = Keeper(setup.config, writer, events, Reporter(conn), watches(api, setup.config))
    writer.on_written = keeper.written
    events.start(stop)
    writer.start(stop)
    keeper.on_leader(True)
    thread = keeper.start(stop)
    parts = Parts()
    try:
        while True:
            message = conn.recv()
            if message[0] == "assigned":
                handed = parts.add(*message[1:])
                if handed is not None:
                    keeper.on_assigned(*handed)
            elif message[0] == "lease":
                until[0] = message[1]
            else:  # "stop"
                break
    except (EOFError, OSError, Terminated):
        pass  # the agent is gone, or we were told to stop by a signal
    finally:
        stop.set()
        thread.join(5.0)  # the keeper stops its watches on its way out
