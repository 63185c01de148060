"""The agent's side of the conditions worker (``worker.py``): starts it when this agent's term as leader
starts, forwards the allocator's hand-over and the lease's validity to it, stops it when the term ends, and
turns what it reports into the agent's metrics.

Nothing here blocks the caller: ``on_assigned`` and ``on_leader`` record and wake the link's thread, which
does the sending. The link keeps the latest hand-over of the term (the allocator's own objects, no copies),
so a worker started late, or again after it died (a backoff of 1 s doubling to 60 s), is given every Service
at once, as a keeper at the start of a term expects.

The worker is a spawned process (multiprocessing's "spawn": a new interpreter, no fork of this threaded
one) and is given this process's ``sys.path``: nixpkgs' Python wrappers add the package's dependencies to
``sys.path`` inside the wrapped script (``site.addsitedir``), not through the environment, so a bare
``python -m`` of ours would not find them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..backoff import Backoff
from ..ipam.allocator import Assigned
from ..metrics import Metrics
from ..model import Key
from . import worker
from .worker import Setup

log = logging.getLogger(__name__)

JOIN = 5.0
"""Seconds a worker told to stop has to end before it is killed."""
CHUNK = 100
"""Services a message carries at most: pickling holds the interpreter (about 1.3 ms for 100 Services), and
the agent's loop must not wait behind a whole hand-over (13 ms at 1,000 Services, 100 ms at 10,000)."""

Target = Callable[[Setup, Connection], None]


class Link:
    def __init__(
        self,
        setup: Setup,
        metrics: Metrics,
        valid_until: Callable[[], float],
        *,
        target: Target = worker.main,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.setup = setup
        self.metrics = metrics
        self.valid_until = valid_until
        """Until when (monotonic) this agent leads unless its lease is renewed: the election's."""
        self.target = target
        self.clock = clock
        self.backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self._cond = threading.Condition()
        self._leading = False
        self._term = 0
        self._assigned: dict[Key, Assigned] = {}
        self._complete = False
        """The allocator has handed over every Service this term."""
        self._outbox: list[tuple[Any, ...]] = []
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._proc_term = 0
        self._relay_thread: threading.Thread | None = None
        self._sent_until = 0.0
        self._start_at = 0.0
        self._started_at = 0.0
        self.starts = 0
        """Workers started so far (for tests)."""

    # ---- inputs (other threads; never block)
    def on_assigned(self, changes: dict[Key, Assigned | None], everything: bool) -> None:
        with self._cond:
            if not self._leading:
                return
            if everything:
                self._assigned = {}
                self._complete = True
            for key, a in changes.items():
                if a is None:
                    self._assigned.pop(key, None)
                else:
                    self._assigned[key] = a
            self._outbox.append(("assigned", changes, everything))
            self._cond.notify()

    def on_leader(self, leader: bool) -> None:
        with self._cond:
            if leader == self._leading:
                return
            self._leading = leader
            self._term += 1
            self._assigned, self._complete, self._outbox = {}, False, []
            self.backoff.reset()
            self._start_at = 0.0
            self._cond.notify()

    def wake(self) -> None:
        """The link's thread looks at once (at a stop, instead of within a second)."""
        with self._cond:
            self._cond.notify()

    # ---- the link's thread
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="conditions-link", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                with self._cond:
                    if not self._outbox:
                        self._cond.wait(1.0)
                self.step()
        finally:
            self.close()

    def step(self) -> None:
        """Starts, feeds or stops the worker as the term asks; the thread's body (tests call it)."""
        with self._cond:
            leading, term = self._leading, self._term
            outbox, self._outbox = self._outbox, []
        if self._proc is not None and (self._proc_term != term or not self._proc.is_alive()):
            if self._proc_term == term:
                if self.clock() - self._started_at > self.backoff.maximum:
                    self.backoff.reset()  # it ran well for a while: a new failure starts afresh
                delay = self.backoff.next()
                log.error(
                    "the conditions worker ended (exit code %s); starting it again in %.0fs",
                    self._proc.exitcode,
                    delay,
                )
                self._start_at = self.clock() + delay
            self.close()
            outbox = []  # the new worker gets the whole hand-over
        if not leading:
            return
        if self._proc is None:
            if self.clock() < self._start_at:
                return
            with self._cond:
                snapshot, complete = dict(self._assigned), self._complete
                self._outbox = []
            self._spawn(term)
            outbox = [("assigned", snapshot, complete)] if snapshot or complete else []
        until = self.valid_until()
        if until != self._sent_until:
            outbox.insert(0, ("lease", until))
            self._sent_until = until
        for message in outbox:
            for part in in_parts(message):
                if not self._send(part):
                    return

    def _spawn(self, term: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=self.target, args=(self.setup, theirs), name="l3lb-conditions", daemon=True)
        proc.start()
        theirs.close()
        self._proc, self._conn, self._proc_term, self._sent_until = proc, ours, term, 0.0
        self._started_at = self.clock()
        self.starts += 1
        self._relay_thread = threading.Thread(
            target=self._relay, args=(ours,), name="conditions-relay", daemon=True
        )
        self._relay_thread.start()
        log.info("started the conditions worker (pid %s)", proc.pid)

    def _send(self, message: tuple[Any, ...]) -> bool:
        assert self._conn is not None
        try:
            self._conn.send(message)
            return True
        except OSError:
            return False  # it died: the next step sees it

    def _relay(self, conn: Connection) -> None:
        """What the worker reports, into the metrics, until its end of the connection closes."""
        try:
            while True:
                message = conn.recv()
                if message[0] == "written":
                    self.metrics.condition_writes.labels(message[1]).inc()
                else:
                    self.metrics.condition_backlog.set(message[1])
        except (EOFError, OSError):
            pass

    def close(self) -> None:
        """Tells the worker to stop, and waits JOIN seconds for it before killing it."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None or conn is None:
            return
        with contextlib.suppress(OSError):  # it died already
            conn.send(("stop",))
        proc.join(JOIN)
        if proc.is_alive():
            log.warning("the conditions worker did not stop in %.0fs; killing it", JOIN)
            proc.kill()
            proc.join()
        if self._relay_thread is not None:
            self._relay_thread.join(JOIN)  # what it sent before it ended, then the end of the connection
        conn.close()
        self.metrics.condition_backlog.set(0)


def in_parts(message: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """A hand-over as messages of at most CHUNK Services: ("assigned", part, everything, last)."""
    if message[0] != "assigned":
        return [message]
    _, changes, everything = message
    items = list(changes.items())
    chunks = [dict(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)] or [{}]
    return [("assigned", chunk, everything, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
