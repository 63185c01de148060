"""The agent loop's plumbing: the typed messages it receives, the inbox they wait in, and when to sync.

- ``Inbox``: watch threads and the netlink monitor append messages; the loop waits
  for them. No lock is taken to put a message or to ask the loop to stop (a deque append, a counter and a
  byte on a pipe), so ``stop()`` is safe from a signal handler even while the loop itself is inside
  ``wait()``. The loop may take a stop in hand (``take_stop()``: it drains first); a further stop is new.
- ``SyncRunner``: kube-proxy's bounded-frequency runner, cut to what the agent needs. A change asks for a
  sync of what changed, at once; so does a timer that ends (``wake``: a hold-down or a drain); a full sync
  (the plan over every address, renewals, strays) is due every ``resync`` seconds; after a failure the next
  sync is a full one, after a backoff that grows until a sync succeeds. It owns the timers; the agent only
  says what happened.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ..backoff import Backoff
from ..model import WatchEvent
from ..netlink.tables import Present


@dataclass(frozen=True, slots=True)
class AddressEvent:
    """Someone else added or removed a host-length address on one of our interfaces (``Presence`` drops
    the echoes of the agent's own requests before they get here)."""

    kind: str  # "add" | "del"
    ip: str
    present: Present
    """Which of our interfaces, and (for an add) until when."""
    at: float

    def __str__(self) -> str:
        return f"netlink {self.kind} {self.ip}"


@dataclass(frozen=True, slots=True)
class MonitorLost:
    """The netlink monitor restarted and may have missed events: read the interface again."""

    at: float

    def __str__(self) -> str:
        return "netlink lost"


Message = WatchEvent | AddressEvent | MonitorLost


class Inbox:
    """Messages for the loop: put from any thread, waited for by the loop."""

    def __init__(self) -> None:
        self._messages: collections.deque[Message] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stops = 0
        self._taken = 0

    def put(self, message: Message) -> None:
        self._messages.append(message)
        self._wake()

    def stop(self) -> None:
        """Ends the loop's wait: safe in a signal handler (no lock, no allocation beyond a counter)."""
        self._stops += 1
        self._wake()

    @property
    def stopping(self) -> bool:
        """A stop was asked for that the loop has not taken in hand."""
        return self._stops > self._taken

    def take_stop(self) -> None:
        """The loop acts on the stops asked for so far (it drains before it ends); ``stopping`` is False
        again until another one comes. A counter, not a flag set back: a stop that arrives meanwhile, in a
        signal handler, is never lost."""
        self._taken = self._stops

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(self._wake_w, b"x")

    def wait(self, timeout: float) -> list[Message]:
        """The messages that arrived, waiting at most ``timeout`` seconds for the first one."""
        if not self._messages and not self.stopping and timeout > 0:
            select.select([self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        return self.drain()

    def drain(self) -> list[Message]:
        out = []
        while self._messages:
            out.append(self._messages.popleft())
        return out

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)


class Sync(Enum):
    CHANGES = "changes"
    """Plan and apply only the addresses whose decision or presence changed."""
    FULL = "full"
    """Re-read the interface if needed, plan over every address, renew lifetimes, collect strays."""


class SyncRunner:
    def __init__(
        self,
        clock: Callable[[], float],
        resync: float,
        retry: Backoff | None = None,
    ) -> None:
        self.clock = clock
        self.resync = resync
        self.retry = retry or Backoff(initial=1.0, maximum=10.0)
        self._changed = False
        self._full_at = clock()  # the first sync is a full one
        self._timer_at: float | None = None
        self.failing_since: float | None = None
        """When the syncs started failing (None while they succeed): /healthz turns after a bound."""

    def changed(self) -> None:
        """Something changed: sync what changed as soon as the loop gets to it."""
        self._changed = True

    def wake(self, at: float | None) -> None:
        """The next timer (a hold-down or a drain) ends at ``at`` (None: none runs): sync the changes then."""
        self._timer_at = at

    def due(self) -> Sync | None:
        """The sync to run now, if any. A change waits while a failed sync backs off (a sync fails only
        when the requests cannot be made at all: a refused address backs off on its own)."""
        now = self.clock()
        if now >= self._full_at:
            return Sync.FULL
        if self.failing_since is None and (
            self._changed or (self._timer_at is not None and now >= self._timer_at)
        ):
            return Sync.CHANGES
        return None

    def timeout(self) -> float:
        """Seconds until a sync is due if nothing changes."""
        if self._changed and self.failing_since is None:
            return 0.0
        timer = self._timer_at if self.failing_since is None else None
        due = self._full_at if timer is None else min(self._full_at, timer)
        return max(0.0, due - self.clock())

    def done(self, sync: Sync, ok: bool) -> None:
        now = self.clock()
        if not ok:
            if self.failing_since is None:
                self.failing_since = now
            self._full_at = now + self.retry.next()
            return
        self._changed = False
        if sync is Sync.FULL:
            self.failing_since = None
            self.retry.reset()
            self._full_at = now + self.resync
