"""The agent's loop without a cluster: watch messages in, a memory interface out."""

from __future__ import annotations

from test_decide import node_obj, slice_obj, svc_obj

from l3lb.agent import NODE, SERVICES, SLICES, Agent
from l3lb.apply import MemoryTable
from l3lb.config import Config, parse_prefixes
from l3lb.model import node_entry, service_entry, slice_entry

slice_e = slice_entry("n1")
CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1", address_lifetime=60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_agent(present: list[str] = ()) -> tuple[Agent, MemoryTable, Clock]:
    clock = Clock()
    table = MemoryTable(clock)
    for ip in present:
        table.set(ip, 0)
    return Agent(CFG, table, clock=clock), table, clock


def feed(agent: Agent, *messages: tuple) -> None:
    for m in messages:
        agent._record(*m, 0.0)
    agent.sync()


def test_nothing_is_removed_before_every_resource_is_listed() -> None:
    agent, table, _ = make_agent(["10.0.100.7", "10.0.100.8", "192.0.2.1"])
    feed(agent, (SERVICES, "REPLACE", []), (SLICES, "REPLACE", []))
    assert set(table.dump()) == {"10.0.100.7", "10.0.100.8", "192.0.2.1"}
    # ... but what is there gets a lifetime, so it would still expire if the agent died now
    assert table.dump()["10.0.100.7"].expires is not None
    feed(agent, (NODE, "REPLACE", [node_entry(node_obj())]))
    assert set(table.dump()) == {"192.0.2.1"}, "strays collected, foreign address untouched"
    assert agent.ready


def test_adopts_restores_and_renews() -> None:
    agent, table, clock = make_agent(["10.0.100.7"])
    svc = svc_obj("web", ["10.0.100.7"])
    feed(
        agent,
        (SERVICES, "REPLACE", [service_entry(svc)]),
        (SLICES, "REPLACE", [slice_e(slice_obj("s", "web", [("n1", True, False)]))]),
        (NODE, "REPLACE", [node_entry(node_obj())]),
    )
    assert set(table.dump()) == {"10.0.100.7"}
    assert agent.metrics.registry.get_sample_value("l3lb_netlink_repairs_total") == 0
    table.remove("10.0.100.7")  # someone else deletes it; the monitor reports it
    feed(agent, ("netlink", "del", ("10.0.100.7", None)))
    assert set(table.dump()) == {"10.0.100.7"}
    assert agent.metrics.registry.get_sample_value("l3lb_netlink_repairs_total") == 1
    before = table.dump()["10.0.100.7"].expires
    clock.now += 25  # past a third of the lifetime
    feed(agent)
    assert table.dump()["10.0.100.7"].expires == before + 25


def test_burst_of_no_op_updates_costs_no_decision() -> None:
    agent = make_agent()[0]
    svc = svc_obj("web", ["10.0.100.7"])
    feed(
        agent,
        (SERVICES, "REPLACE", [service_entry(svc)]),
        (SLICES, "REPLACE", []),
        (NODE, "REPLACE", [node_entry(node_obj())]),
    )
    for _ in range(100):
        agent._record(SERVICES, "SET", service_entry(svc), 0.0)
        agent._record(SLICES, "SET", slice_e(slice_obj("s", "other", [("n2", True, False)])), 0.0)
    assert not agent.tracker.pending
