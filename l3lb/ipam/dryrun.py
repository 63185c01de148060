"""The allocator of a ``--dry-run`` agent: it decides as a leader would, from the same full state, and logs
what it would write instead of writing it. Beside another load balancer, this shows before the switch
which Services l3lb would take over as they are, allocate anew or warn about (README: Coming from
MetalLB). It stands in no election: every dry-run agent decides and logs on its own."""

from __future__ import annotations

import logging

from ..model import Key, fmt_key

log = logging.getLogger(__name__)


class DryRunWriter:
    """The allocator's status writer and Event recorder that only log, each decision once (nothing lands,
    so the allocator would decide the same again on later events)."""

    def __init__(self) -> None:
        self.said: dict[Key, tuple[tuple[str, ...], bool]] = {}

    def write(
        self, key: Key, ips: tuple[str, ...], resource_version: str = "", take_over: bool = False
    ) -> None:
        if self.said.get(key) == (ips, take_over):
            return
        self.said[key] = (ips, take_over)
        if take_over:
            log.info("dry run: would take over status of %s as it is: %s", fmt_key(key), ", ".join(ips))
        else:
            log.info("dry run: would write status of %s: %s", fmt_key(key), ", ".join(ips) or "nothing")

    def drop(self) -> None:
        pass

    def event(self, key: Key, uid: str, kind: str, reason: str, message: str) -> None:
        log.info("dry run: would record a %s Event %s on %s: %s", kind, reason, fmt_key(key), message)
