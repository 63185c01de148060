"""The agent's loop without a cluster, driven through ``run()`` itself: a scripted inbox delivers messages at
given times of a fake clock (and moves the clock on when the loop waits), a memory table is the interface."""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_allocate import FakeWriter
from test_decide import node_obj, slice_obj, svc_obj

from l3lb.agent import NODE, SERVICES, SLICES, Agent
from l3lb.allocator import Allocator
from l3lb.apply import MemoryTable
from l3lb.config import Config, parse_prefixes
from l3lb.model import node_entry, service_entry, slice_entry
from l3lb.runner import Inbox, Message

slice_e = slice_entry("n1")
CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1", address_lifetime=60)
VIP = "10.0.100.7"
REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedInbox(Inbox):
    """Delivers scripted steps at their time on the fake clock; a wait with nothing due moves the clock on
    by the timeout. When the script is done the loop is stopped."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.script: list[tuple[float, int, Callable[[], object]]] = []
        self.waits: list[float] = []
        self._order = itertools.count()

    def at(self, t: float, step: Callable[[], object]) -> None:
        bisect.insort(self.script, (t, next(self._order), step))

    def wait(self, timeout: float) -> list[Message]:
        self.waits.append(timeout)
        assert len(self.waits) < 100_000, "the loop spins without waiting"
        if not self._messages:
            if not self.script:
                self.stopping = True
                return []
            t, _, step = self.script[0]
            if t > self.clock.now + timeout:
                self.clock.now += timeout
                return []
            self.script.pop(0)
            self.clock.now = max(self.clock.now, t)
            step()
        return self.drain()


@dataclass
class Rig:
    agent: Agent
    table: MemoryTable
    clock: Clock
    inbox: ScriptedInbox


def make_agent(present: tuple[str, ...] = ()) -> Rig:
    clock = Clock()
    table = MemoryTable(clock)
    for ip in present:
        table.set(ip, 0)
    inbox = ScriptedInbox(clock)
    return Rig(Agent(CFG, table, clock=clock, inbox=inbox), table, clock, inbox)


def lists(agent: Agent, *, services: list = (), slices: list = ()) -> Callable[[], None]:
    def step() -> None:
        agent.sink(SERVICES, "REPLACE", [service_entry(s) for s in services])
        agent.sink(SLICES, "REPLACE", [slice_e(s) for s in slices])
        agent.sink(NODE, "REPLACE", [node_entry(node_obj())])

    return step


WEB = svc_obj("web", [VIP])
WEB_READY = slice_obj("s", "web", [("n1", True, False)])


def test_nothing_is_removed_before_every_resource_is_listed() -> None:
    rig = make_agent(("10.0.100.7", "10.0.100.8", "192.0.2.1"))
    seen: dict[str, set[str]] = {}
    rig.inbox.at(1000, lambda: rig.agent.sink(SERVICES, "REPLACE", []))
    rig.inbox.at(1001, lambda: rig.agent.sink(SLICES, "REPLACE", []))
    rig.inbox.at(1030, lambda: seen.setdefault("before", set(rig.table.dump())))
    rig.inbox.at(1031, lambda: rig.agent.sink(NODE, "REPLACE", [node_entry(node_obj())]))
    rig.inbox.at(1032, lambda: seen.setdefault("after", set(rig.table.dump())))
    rig.agent.run()
    assert seen["before"] == {"10.0.100.7", "10.0.100.8", "192.0.2.1"}
    assert seen["after"] == {"192.0.2.1"}, "strays collected, foreign address untouched"
    assert rig.table.dump()["192.0.2.1"].expires is None, "a foreign address keeps its (permanent) lifetime"
    assert rig.agent.ready


def test_what_is_there_is_renewed_while_the_picture_is_incomplete() -> None:
    rig = make_agent(("10.0.100.7",))
    rig.inbox.at(1030, lambda: None)
    rig.agent.run()
    assert rig.table.dump()["10.0.100.7"].expires is not None, "it would expire if the rig.agent died now"


def test_adopts_restores_renews_and_collects_strays() -> None:
    rig = make_agent((VIP,))
    repairs = lambda: rig.agent.metrics.registry.get_sample_value("l3lb_netlink_repairs_total")  # noqa: E731
    seen: dict[str, object] = {}
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1001, lambda: seen.setdefault("adopted", (set(rig.table.dump()), repairs())))

    def someone_deletes() -> None:
        rig.table.remove(VIP)
        rig.agent.on_netlink("del", VIP, None)

    rig.inbox.at(1002, someone_deletes)
    rig.inbox.at(1002.001, lambda: seen.setdefault("restored", (set(rig.table.dump()), repairs())))

    def someone_adds_a_stray() -> None:
        rig.table.set("10.0.100.9", 0)
        rig.agent.on_netlink("add", "10.0.100.9", rig.table.dump()["10.0.100.9"])

    rig.inbox.at(1003, someone_adds_a_stray)
    rig.inbox.at(1003.001, lambda: seen.setdefault("collected", set(rig.table.dump())))
    rig.inbox.at(1040, lambda: seen.setdefault("renewed", rig.table.dump()[VIP].expires))
    rig.agent.run()
    assert seen["adopted"] == ({VIP}, 0)
    assert seen["restored"] == ({VIP}, 1), "restored at once, not at the next resync"
    assert seen["collected"] == {VIP}
    assert seen["renewed"] is not None and seen["renewed"] > 1002 + 60, "renewed after a third of 60 s"


def test_losing_leadership_does_not_postpone_a_repair_in_the_same_batch() -> None:
    """Leadership is the allocator's business (its own thread): the agent's loop has no leadership state
    that could swallow a pending sync. (It once cleared the sync flag on losing the Lease.)"""
    rig = make_agent()
    allocator = Allocator(CFG, FakeWriter(), rig.agent.metrics, clock=rig.clock)
    rig.agent.allocator = allocator
    seen: dict[str, set[str]] = {}
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1001, lambda: allocator.on_leader(True))

    def repair_and_loss() -> None:
        rig.table.remove(VIP)
        rig.agent.on_netlink("del", VIP, None)
        allocator.on_leader(False)

    rig.inbox.at(1002, repair_and_loss)
    rig.inbox.at(1002.001, lambda: seen.setdefault("after", set(rig.table.dump())))
    rig.agent.run()
    assert seen["after"] == {VIP}
    assert allocator._pending, "the Service events went to the allocator"


def test_a_sync_of_changes_plans_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 Services held, one changes: the sync plans that Service's IP, not the other 9,999."""
    rig = make_agent()
    services = [
        svc_obj(f"s{i}", [f"10.0.{100 + i // 250}.{i % 250 + 1}"], policy="Cluster") for i in range(10_000)
    ]
    slices = [slice_obj(f"e{i}", f"s{i}", [("n2", True, False)]) for i in range(10_000)]
    cfg = Config(prefixes=parse_prefixes(["10.0.0.0/16"]), node_name="n1", address_lifetime=60)
    rig.agent.config = rig.agent.tracker.config = cfg
    import l3lb.agent

    planned: list[int] = []
    real_plan = l3lb.agent.plan

    def counting_plan(desired, present, config, now, ips=None):  # type: ignore[no-untyped-def]
        out = real_plan(desired, present, config, now, ips)
        planned.append(len(desired | present.keys()) if ips is None else len(set(ips)))
        return out

    monkeypatch.setattr(l3lb.agent, "plan", counting_plan)
    rig.inbox.at(1000, lists(rig.agent, services=services, slices=slices))
    rig.inbox.at(1001, lambda: planned.clear())
    gone = slice_obj("e7", "s7", [("n2", False, False)])
    rig.inbox.at(1002, lambda: rig.agent.sink(SLICES, "SET", slice_e(gone)))
    rig.inbox.at(1002.001, lambda: planned.append(-1))
    rig.agent.run()
    assert len(rig.table.dump()) == 9_999
    assert planned[: planned.index(-1)] == [1], planned


def test_renewals_of_a_large_table_do_not_delay_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full sync that renews 200 addresses applies them in batches; an event that arrives meanwhile is
    applied after the current batch, not after all of them."""
    import l3lb.agent

    monkeypatch.setattr(l3lb.agent, "RENEW_BATCH", 10)
    rig = make_agent()
    services = [svc_obj(f"s{i}", [f"10.0.100.{i + 1}"], policy="Cluster") for i in range(200)]
    slices = [slice_obj(f"e{i}", f"s{i}", [("n2", True, False)]) for i in range(200)]
    log: list[str] = []
    real_set, real_remove = rig.table.set, rig.table.remove

    def slow_set(ip: str, lifetime: int, interface: str = "lo") -> None:
        rig.clock.now += 0.0001  # a netlink call takes time
        log.append("set")
        if log.count("set") == 200 + 5:  # the renewals have begun: an event arrives
            log.append("event")
            rig.agent.sink(SLICES, "DELETE", slice_e(slices[0]))
        real_set(ip, lifetime, interface)

    def logged_remove(ip: str, interface: str = "lo") -> None:
        log.append(f"remove {ip}")
        real_remove(ip, interface)

    rig.table.set, rig.table.remove = slow_set, logged_remove  # type: ignore[method-assign]
    rig.inbox.at(1000, lists(rig.agent, services=services, slices=slices))
    rig.inbox.at(1060, lambda: None)
    rig.agent.run()
    assert "10.0.100.1" not in rig.table.dump()
    between = log[log.index("event") : log.index("remove 10.0.100.1")]
    assert between.count("set") <= 10, f"applied after the current batch, not after {between.count('set')}"
    assert log.count("set") >= 200 + 190, "and the renewals went on"


def test_no_op_updates_cost_no_decision_and_no_sync() -> None:
    rig = make_agent()
    syncs: list[int] = []
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[]))
    rig.inbox.at(1001, lambda: syncs.append(rig.agent.sync_count))

    def burst() -> None:
        for _ in range(100):
            rig.agent.sink(SERVICES, "SET", service_entry(WEB))
            rig.agent.sink(SLICES, "SET", slice_e(slice_obj("s", "other", [("n2", True, False)])))

    rig.inbox.at(1002, burst)
    rig.inbox.at(1003, lambda: syncs.append(rig.agent.sync_count))
    rig.agent.run()
    assert syncs[0] == syncs[1]
    assert rig.agent.metrics.registry.get_sample_value("l3lb_event_to_apply_seconds_count") == 1


def test_a_failed_sync_is_retried_in_full_with_backoff() -> None:
    rig = make_agent()
    calls: list[float] = []
    real_set = rig.table.set

    def flaky(ip: str, lifetime: int, interface: str = "lo") -> None:
        calls.append(rig.clock.now)
        if len(calls) <= 2:
            raise OSError("netlink busy")
        real_set(ip, lifetime, interface)

    rig.table.set = flaky  # type: ignore[method-assign]
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1060, lambda: None)
    rig.agent.run()
    assert VIP in rig.table.dump()
    assert calls[0] == 1000 and 0.5 <= calls[1] - calls[0] <= 1.0 and 1.0 <= calls[2] - calls[1] <= 2.0


def test_an_add_the_kernel_refuses_fails_the_sync_and_keeps_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Adds go out in one batch: when the kernel refuses one of them, the others are recorded as held, the
    sync counts as failed (a full sync follows, with backoff), and the log names the refused address."""
    rig = make_agent()
    refused = "10.0.100.8"
    real_set_many = rig.table.set_many
    refusals: list[float] = []
    held_after_first: list[bool] = []

    def partly(ips: list[str], lifetime: int, interface: str = "lo") -> dict[str, int]:
        if refused in ips and len(refusals) < 2:
            refusals.append(rig.clock.now)
            real_set_many([ip for ip in ips if ip != refused], lifetime, interface)
            return {refused: errno.EINVAL}
        return real_set_many(ips, lifetime, interface)

    rig.table.set_many = partly  # type: ignore[method-assign]
    other = svc_obj("other", [refused], policy="Cluster")
    other_ready = slice_obj("o", "other", [("n2", True, False)])
    rig.inbox.at(1000, lists(rig.agent, services=[WEB, other], slices=[WEB_READY, other_ready]))
    rig.inbox.at(1000.1, lambda: held_after_first.append(VIP in rig.agent.present))
    rig.inbox.at(1060, lambda: None)
    with caplog.at_level(logging.ERROR, logger="l3lb.agent"):
        rig.agent.run()
    assert held_after_first == [True], "the address the kernel took is held right after the failed sync"
    assert len(refusals) == 2 and refusals[1] - refusals[0] >= 0.5, "retried in full, after a backoff"
    assert {VIP, refused} <= rig.table.dump().keys(), "and in the end both are held"
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[1] is not None]
    assert failures and refused in str(failures[0].exc_info[1]), "the log names the refused address"


STOP_BY_SIGNAL = """
import signal, threading, time
from l3lb.agent import Agent
from l3lb.apply import MemoryTable
from l3lb.config import Config, parse_prefixes
from l3lb.model import node_entry

ready = {"conditions": [{"type": "Ready", "status": "True"}]}
node = node_entry({"metadata": {"name": "n1"}, "status": ready})
agent = Agent(Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1"), MemoryTable())


def watch():  # a watch thread keeping the inbox busy
    while True:
        agent.sink("node", "SET", node)
        time.sleep(0.0001)


threading.Thread(target=watch, daemon=True).start()
signal.signal(signal.SIGALRM, lambda *_: agent.stop())
for _ in range(2000):
    agent.inbox.stopping = False
    signal.setitimer(signal.ITIMER_REAL, 0.0005)
    agent.run()
print("stopped 2000 times")
"""


def test_stop_from_a_signal_handler_never_deadlocks_the_loop() -> None:
    """2,000 stops by SIGALRM, each landing wherever the loop happens to be, with a watch thread feeding the
    inbox. A stop that took a lock the loop can hold (queue.Queue.put did) hangs within a few hundred."""
    proc = subprocess.run(
        [sys.executable, "-c", STOP_BY_SIGNAL], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0 and "stopped 2000 times" in proc.stdout, proc.stderr


def test_weighted_local_ips_go_to_their_weight_class_and_move_deleting_first() -> None:
    """--weighted with 3 classes: a Local IP sits on l3lbwN (N = local ready endpoints, capped at 3), a
    Cluster IP on lo; a change of class deletes from the old interface before adding on the new one, and
    another change within WEIGHT_HOLD seconds waits for the full sync after it."""
    rig = make_agent()
    classes = ("lo", "l3lbw1", "l3lbw2", "l3lbw3")
    rig.agent.config = rig.agent.tracker.config = Config(
        prefixes=CFG.prefixes, node_name="n1", address_lifetime=60, weight_classes=3
    )
    rig.table.interfaces = classes
    ops: list[str] = []
    real_set, real_remove = rig.table.set, rig.table.remove
    rig.table.set = lambda ip, lt, i: (ops.append(f"set {ip} {i}"), real_set(ip, lt, i))  # type: ignore[method-assign]
    rig.table.remove = lambda ip, i: (ops.append(f"del {ip} {i}"), real_remove(ip, i))  # type: ignore[method-assign]
    web = svc_obj("web", [VIP])
    api = svc_obj("api", ["10.0.100.8"], policy="Cluster")
    where: dict[float, dict[str, str]] = {}
    seen = lambda t: where.setdefault(t, {ip: p.interface for ip, p in rig.table.dump().items()})  # noqa: E731

    def endpoints(n: int) -> list:
        return [("n1", True, False)] * n + [("n2", True, False)]

    rig.inbox.at(
        1000,
        lists(
            rig.agent,
            services=[web, api],
            slices=[slice_obj("s", "web", endpoints(1)), slice_obj("a", "api", endpoints(0))],
        ),
    )
    rig.inbox.at(1001, lambda: seen(1001))
    rig.inbox.at(
        1002,
        lambda: (ops.clear(), rig.agent.sink(SLICES, "SET", slice_e(slice_obj("s", "web", endpoints(5))))),
    )
    rig.inbox.at(1002.01, lambda: (seen(1002.01), where.setdefault(-1, {"ops": "; ".join(ops)})))
    rig.inbox.at(1003, lambda: rig.agent.sink(SLICES, "SET", slice_e(slice_obj("s", "web", endpoints(2)))))
    rig.inbox.at(1003.01, lambda: seen(1003.01))
    rig.inbox.at(1030, lambda: seen(1030))
    rig.agent.run()
    assert where[1001] == {VIP: "l3lbw1", "10.0.100.8": "lo"}
    assert where[1002.01] == {VIP: "l3lbw3", "10.0.100.8": "lo"}, "five endpoints: the top class"
    assert where[-1]["ops"] == f"del {VIP} l3lbw1; set {VIP} l3lbw3", "the delete first"
    assert where[1003.01][VIP] == "l3lbw3", "held back: it moved a second ago"
    assert where[1030][VIP] == "l3lbw2", "moved by a later full sync"
    assert rig.agent.metrics.registry.get_sample_value("l3lb_weight_moves_total") == 2
    weight = rig.agent.metrics.registry.get_sample_value
    assert weight("l3lb_address_weight", {"ip": VIP}) == 2
    assert weight("l3lb_address_weight", {"ip": "10.0.100.8"}) is None, "Cluster IPs on lo carry no weight"
    assert rig.agent.metrics.registry.get_sample_value("l3lb_netlink_repairs_total") == 0
