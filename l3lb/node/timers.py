"""Time in the decision: the hold-down before an IP is announced and the drain before it is withdrawn.

``Tracker`` says which IPs this node wants to announce now and which a graceful reason withdraws (it knows no
time). ``Timers`` adds time to that, per IP and O(the IPs that changed):

- **Hold-down.** An IP to be announced that is not held already waits for its hold-down (the shortest of its
  announcing Services', from ``l3lb.io/announce-hold-down`` or ``--announce-hold-down``), counted from when
  its reason to announce began. If the reason goes first, the announcement never happens and is counted as
  suppressed, so a crash-looping pod costs the routers nothing. Withdrawals never wait. An IP this agent
  holds already (adopted at start, or put back after someone removed it) is not held down: it is out.
- **Drain** (RFC 8326). An IP held on its interface that ``Tracker`` withdraws for a graceful reason moves to
  the drain interface for ``drain_seconds``, where FRR advertises it with the GRACEFUL_SHUTDOWN community,
  so routers prefer any other path while this one still works; then it goes. If the reason goes away
  meanwhile the IP comes back at once (or when its hold-down ends: it drains on until then); a reason to
  withdraw that is not graceful (its endpoints gone, say) removes it at once.

``Placement`` reads ``pending`` and ``draining`` to say where each IP is; the agent's loop asks ``next_due()``
when a timer ends, so that it syncs then and not later.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass

from ..config import Config
from ..netlink.tables import Present
from .tracker import Tracker


@dataclass(frozen=True, slots=True)
class Timed:
    """What became of one IP's timers in an update: for the log and the metrics."""

    ip: str
    kind: str
    """"pending" (held down until ``at``), "suppressed" (its reason went after ``waited`` seconds) or
    "draining" (until ``at``)."""
    at: float = 0.0
    waited: float = 0.0


class Timers:
    def __init__(self, config: Config, tracker: Tracker, clock: Callable[[], float]) -> None:
        self.config = config
        self.tracker = tracker
        self.clock = clock
        self.pending: dict[str, float] = {}
        """IP -> when its hold-down ends (it is not on an interface of ours meanwhile)."""
        self.draining: dict[str, float] = {}
        """IP -> when its drain ends (it is on the drain interface meanwhile)."""
        self._since: dict[str, float] = {}
        """When each pending IP's reason to announce began: for ``suppressed``."""
        self.timed: list[Timed] = []
        """What the last ``update()`` started or ended early."""

    def update(self, ips: Iterable[str], present: Mapping[str, Present], held: Container[str]) -> set[str]:
        """Times the IPs whose decision or presence changed (``ips``), and ends the timers that are due;
        returns ``ips`` with the IPs whose timer ended: what the sync must plan. ``held``: the IPs out on
        their interface as of the last sync (``Presence.held``)."""
        now = self.clock()
        t = self.tracker
        drain = self.config.drain_interface
        self.timed = []
        out = set(ips)
        for ip in out:
            out_now = ip in held or ((p := present.get(ip)) is not None and p.interface != drain)
            if ip in t.announced:
                hold = t.holds.get(ip, 0.0)
                if ip not in self.pending and hold and not out_now:
                    self.pending[ip] = now + hold
                    self._since[ip] = now
                    self.timed.append(Timed(ip, "pending", now + hold))
                elif ip in self.pending:  # its hold-down changed: counted from the same start
                    self.pending[ip] = self._since[ip] + hold
            elif ip in self.pending:
                del self.pending[ip]
                self.timed.append(Timed(ip, "suppressed", waited=now - self._since.pop(ip)))
            if ip in t.draining and drain and out_now and ip not in self.draining:
                self.draining[ip] = now + self.config.drain_seconds
                self.timed.append(Timed(ip, "draining", now + self.config.drain_seconds))
            elif ip in self.draining and ip not in t.draining and ip not in self.pending:
                del self.draining[ip]
        for timers in (self.pending, self.draining):
            for ip in [ip for ip, end in timers.items() if end <= now]:
                del timers[ip]
                self._since.pop(ip, None)
                out.add(ip)
        return out

    def next_due(self) -> float | None:
        """When the next timer ends, if any."""
        ends = [*self.pending.values(), *self.draining.values()]
        return min(ends) if ends else None
