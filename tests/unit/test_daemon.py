"""The daemon's wiring without a cluster: one Service watch feeds the agent and the allocator."""

from __future__ import annotations

import threading
from typing import Any

from objects import slice_obj, svc_obj

from l3lb.config import Config, parse_prefixes
from l3lb.daemon import ApiSide
from l3lb.metrics import Metrics
from l3lb.model import SERVICES, SLICES, WatchEvent, service_entry, slice_entry
from l3lb.netlink.tables import MemoryTable
from l3lb.node.agent import Agent

CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1")


class Offered:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []

    def offer(self, event: WatchEvent) -> None:
        self.events.append(event)


def test_the_service_watch_feeds_the_agent_and_the_allocator_one_event() -> None:
    agent = Agent(CFG, MemoryTable())
    side = ApiSide(CFG, agent, Metrics(), "kube-system", threading.Event())
    allocator: Any = Offered()
    side.allocator = allocator
    side.sink(SERVICES)(SERVICES, "SET", service_entry(svc_obj("web", ["10.0.100.7"])))
    side.sink(SLICES)(SLICES, "SET", slice_entry("n1")(slice_obj("s", "web", [("n1", True, False)])))
    got = agent.inbox.drain()
    assert [e.resource for e in got] == [SERVICES, SLICES]  # type: ignore[union-attr]
    assert allocator.events == [got[0]] and allocator.events[0] is got[0], "one event, parsed once, for both"
