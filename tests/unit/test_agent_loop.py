"""The agent's loop without a cluster, driven through ``run()`` itself: a scripted inbox delivers messages at
given times of a fake clock (and moves the clock on when the loop waits), a memory table is the interface."""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from objects import node_obj, slice_obj, svc_obj

from l3lb.config import Config, parse_prefixes
from l3lb.model import NODE, SERVICES, SLICES, node_entry, service_entry, slice_entry
from l3lb.netlink.tables import MemoryTable, Present
from l3lb.node.agent import Agent
from l3lb.node.runner import Inbox, Message

slice_e = slice_entry("n1")
CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1", address_lifetime=60)
VIP = "10.0.100.7"
REPO = Path(__file__).resolve().parents[2]


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
                self.stop()
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


def make_agent(present: tuple[str, ...] = (), config: Config = CFG) -> Rig:
    clock = Clock()
    table = MemoryTable(clock, ("lo", *config.extra_interfaces))
    for ip in present:
        table.set(ip, 0)
    inbox = ScriptedInbox(clock)
    return Rig(Agent(config, table, clock=clock, inbox=inbox), table, clock, inbox)


def netlink(agent: Agent, kind: str, ip: str, interface: str = "lo", expires: float | None = None) -> None:
    """A notification of someone else's change, as the monitor thread hands it over."""
    agent.presence.notified(kind, ip, Present(expires, interface), False)


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
        netlink(rig.agent, "del", VIP)

    rig.inbox.at(1002, someone_deletes)
    rig.inbox.at(1002.001, lambda: seen.setdefault("restored", (set(rig.table.dump()), repairs())))

    def someone_adds_a_stray() -> None:
        rig.table.set("10.0.100.9", 0)
        netlink(rig.agent, "add", "10.0.100.9")

    rig.inbox.at(1003, someone_adds_a_stray)
    rig.inbox.at(1003.001, lambda: seen.setdefault("collected", set(rig.table.dump())))
    rig.inbox.at(1040, lambda: seen.setdefault("renewed", rig.table.dump()[VIP].expires))
    rig.agent.run()
    assert seen["adopted"] == ({VIP}, 0)
    assert seen["restored"] == ({VIP}, 1), "restored at once, not at the next resync"
    assert seen["collected"] == {VIP}
    assert seen["renewed"] is not None and seen["renewed"] > 1002 + 60, "renewed after a third of 60 s"


def test_a_sync_of_changes_plans_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 Services held, one changes: the sync plans that Service's IP, not the other 9,999."""
    rig = make_agent()
    services = [
        svc_obj(f"s{i}", [f"10.0.{100 + i // 250}.{i % 250 + 1}"], policy="Cluster") for i in range(10_000)
    ]
    slices = [slice_obj(f"e{i}", f"s{i}", [("n2", True, False)]) for i in range(10_000)]
    cfg = Config(prefixes=parse_prefixes(["10.0.0.0/16"]), node_name="n1", address_lifetime=60)
    rig.agent.config = rig.agent.tracker.config = cfg
    import l3lb.node.agent

    planned: list[int] = []
    real_plan = l3lb.node.agent.plan

    def counting_plan(desired, present, config, now, ips=None):  # type: ignore[no-untyped-def]
        out = real_plan(desired, present, config, now, ips)
        planned.append(len(desired | present.keys()) if ips is None else len(set(ips)))
        return out

    monkeypatch.setattr(l3lb.node.agent, "plan", counting_plan)
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
    import l3lb.node.agent

    monkeypatch.setattr(l3lb.node.agent, "RENEW_BATCH", 10)
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


class Events:
    """The Events the agent records, as (kind, reason, Service name, message)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    def event(self, key: tuple[str, str], uid: str, kind: str, reason: str, message: str) -> None:
        self.seen.append((kind, reason, key[1], message))


def test_a_refused_address_backs_off_alone_and_never_delays_another(caplog: pytest.LogCaptureFixture) -> None:
    """The kernel refuses one Service's IP every time: that IP is retried on a backoff of its own, with a
    warning line and one Warning Event, while another Service's IP is added as soon as it comes; the sync
    itself does not fail. Past UNAPPLIED_AFTER, /healthz says which address is refused. (A refused add
    once failed the whole sync, so every other change waited for the retries' 5-10 s backoff.)"""
    rig = make_agent()
    events = rig.agent.report.events = Events()
    refused = "10.0.100.8"
    attempts: list[float] = []
    real_set = rig.table.set

    def refusing(ip: str, lifetime: int, interface: str = "lo") -> None:
        if ip == refused:
            attempts.append(rig.clock.now)
            raise OSError(errno.EINVAL, "Invalid argument")
        real_set(ip, lifetime, interface)

    rig.table.set = refusing  # type: ignore[method-assign]
    bad = svc_obj("bad", [refused], policy="Cluster")
    bad_ready = slice_obj("b", "bad", [("n2", True, False)])
    rig.inbox.at(1000, lists(rig.agent, services=[bad], slices=[bad_ready]))
    seen: dict[str, object] = {}
    rig.inbox.at(1005, lambda: rig.agent.sink(SERVICES, "SET", service_entry(WEB)))
    rig.inbox.at(1005, lambda: rig.agent.sink(SLICES, "SET", slice_e(WEB_READY)))
    rig.inbox.at(1005.001, lambda: seen.setdefault("web", VIP in rig.table.dump()))
    rig.inbox.at(1020, lambda: seen.setdefault("health early", rig.agent.health()))
    rig.inbox.at(1040, lambda: seen.setdefault("health late", rig.agent.health()))
    with caplog.at_level(logging.WARNING, logger="l3lb"):
        rig.agent.run()
    assert seen["web"] is True, "the other Service's IP is added at once"
    assert rig.agent.runner.failing_since is None, "no sync failed"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 0.5 <= gaps[0] <= 1.0 and 1.0 <= gaps[1] <= 2.0 and max(gaps) <= 30.0, gaps
    assert 4 <= len(attempts) <= 12, attempts
    warnings = [e for e in events.seen if e[0] == "Warning"]
    assert warnings == [
        ("Warning", "AddressRefused", "bad", f"n1 cannot put {refused} on lo: Invalid argument")
    ], "one Warning Event for the cause, not one per retry"
    lines = [r.getMessage() for r in caplog.records if refused in r.getMessage()]
    assert lines and all(r.exc_info is None for r in caplog.records), "a line, not a traceback"
    assert seen["health early"] is None
    assert seen["health late"] == f"{refused} on lo refused by the kernel for 40s: Invalid argument"


def test_a_deleted_weight_class_interface_is_made_again() -> None:
    """Someone deletes l3lbw2 (its addresses go with it, and the kernel says so): the agent makes the
    interface again and puts its IP back at once, instead of meeting ENODEV forever."""
    weighted = Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=60, weight_classes=2)
    rig = make_agent(config=weighted)
    two = slice_obj("s", "web", [("n1", True, False), ("n1", True, False)])
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[two]))
    seen: dict[str, object] = {}

    def delete_link() -> None:
        seen["before"] = rig.table.dump()[VIP].interface
        rig.table.unlink("l3lbw2")
        netlink(rig.agent, "del", VIP, "l3lbw2")

    rig.inbox.at(1003, delete_link)
    rig.inbox.at(1003.001, lambda: seen.setdefault("after", rig.table.dump().get(VIP)))
    rig.agent.run()
    assert seen["before"] == "l3lbw2"
    assert seen["after"] is not None and seen["after"].interface == "l3lbw2"  # type: ignore[attr-defined]
    assert "l3lbw2" in rig.table.links and not rig.agent.presence.refused


def test_a_refused_removal_does_not_hold_back_the_adds() -> None:
    """One batch: a removal the kernel refuses is retried on its own; the adds of the same sync are made.
    (A removal that raised once skipped every add after it, until the full sync after a backoff.)"""
    rig = make_agent(("10.0.100.9",))
    real_remove = rig.table.remove
    seen: dict[str, object] = {}

    def refusing(ip: str, interface: str = "lo") -> None:
        if ip == "10.0.100.9" and "refused" not in seen:
            seen["refused"] = rig.clock.now
            raise OSError(errno.EPERM, "Operation not permitted")
        real_remove(ip, interface)

    rig.table.remove = refusing  # type: ignore[method-assign]
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1000.001, lambda: seen.setdefault("at once", set(rig.table.dump())))
    rig.inbox.at(1003, lambda: seen.setdefault("later", set(rig.table.dump())))
    rig.agent.run()
    assert seen["refused"] == 1000
    assert seen["at once"] == {VIP, "10.0.100.9"}, "the add went through; the stray waits for its retry"
    assert seen["later"] == {VIP}, "and the stray goes at its retry"


def test_a_lost_monitor_reads_the_interfaces_again_at_once() -> None:
    """The monitor lost notifications (ENOBUFS): a stray added meanwhile is found by a read of the
    interfaces right away, not at the next full sync."""
    rig = make_agent()
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    seen: dict[str, set[str]] = {}

    def lost_while_a_stray_came() -> None:
        rig.table.set("10.0.100.9", 0)  # its notification was among those lost
        rig.table.remove(VIP)
        rig.agent.presence.lost()

    rig.inbox.at(1002, lost_while_a_stray_came)
    rig.inbox.at(1002.001, lambda: seen.setdefault("after", set(rig.table.dump())))
    rig.agent.run()
    assert seen["after"] == {VIP}, "stray collected and ours restored at once"


def test_full_syncs_read_the_interfaces_again_now_and_then() -> None:
    """A change no notification told of (a monitor that missed it without noticing) is found by the
    periodic re-read, every REREAD_EVERY-th full sync, even with permanent addresses."""
    rig = make_agent(config=Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=0))
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1001, lambda: rig.table.set("10.0.100.9", 0))  # unseen
    seen: dict[float, bool] = {}
    for t in (1035, 1075):
        rig.inbox.at(t, lambda t=t: seen.setdefault(t, "10.0.100.9" in rig.table.dump()))
    rig.agent.run()
    assert seen == {1035: True, 1075: False}, "collected by the re-read of a later full sync, within a minute"


def test_renewals_keep_up_under_endless_churn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to sync every millisecond for 30 s, and each request takes a millisecond, so the loop finds
    an event at every turn: the renewals of 200 addresses with a 9 s lifetime still go out between the
    syncs, and no lifetime runs out. (A loop that renewed only when no sync was due renewed nothing under
    churn, and each full sync cleared its queue: every address lapsed.)"""
    import l3lb.node.agent

    monkeypatch.setattr(l3lb.node.agent, "RENEW_BATCH", 10)
    rig = make_agent(config=Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=9))
    services = [svc_obj(f"s{i}", [f"10.0.100.{i + 1}"], policy="Cluster") for i in range(200)]
    slices = [slice_obj(f"e{i}", f"s{i}", [("n2", True, False)]) for i in range(200)]
    real_set, real_remove = rig.table.set, rig.table.remove

    def slow_set(ip: str, lifetime: int, interface: str = "lo") -> None:
        rig.clock.now += 0.001
        real_set(ip, lifetime, interface)

    def slow_remove(ip: str, interface: str = "lo") -> None:
        rig.clock.now += 0.001
        real_remove(ip, interface)

    rig.table.set, rig.table.remove = slow_set, slow_remove  # type: ignore[method-assign]
    rig.inbox.at(1000, lists(rig.agent, services=services, slices=slices))
    lapsed: list[tuple[float, str]] = []
    flip = itertools.cycle([True, False])

    def churn() -> None:
        rig.agent.sink(SLICES, "SET", slice_e(slice_obj("e0", "s0", [("n2", next(flip), False)])))
        now = rig.clock.now
        lapsed.extend((now, ip) for ip, p in rig.table.dump().items() if (p.expires or now) < now)

    for k in range(30_000):
        rig.inbox.at(1001 + k * 0.001, churn)
    rig.agent.run()
    assert lapsed == [], lapsed[:5]
    assert rig.clock.now > 1030


STOP_BY_SIGNAL = """
import signal, threading, time
from l3lb.node.agent import Agent
from l3lb.netlink.tables import MemoryTable
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
    agent.inbox.take_stop()
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
    another change within WEIGHT_HOLD seconds waits for the full sync after it, which then forgets the
    move (the record of moves once grew without end)."""
    rig = make_agent(
        config=Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=60, weight_classes=3)
    )
    ops: list[str] = []
    real_set, real_remove, real_apply = rig.table.set, rig.table.remove, rig.table.apply
    rig.table.apply = lambda changes, lt: (ops.append("batch:"), real_apply(changes, lt))[1]  # type: ignore[method-assign]
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
    assert where[-1]["ops"] == f"batch:; del {VIP} l3lbw1; set {VIP} l3lbw3", "the delete first, one batch"
    assert where[1003.01][VIP] == "l3lbw3", "held back: it moved a second ago"
    assert where[1030][VIP] == "l3lbw2", "moved by a later full sync"
    assert rig.agent.metrics.registry.get_sample_value("l3lb_weight_moves_total") == 2
    weight = rig.agent.metrics.registry.get_sample_value
    assert weight("l3lb_address_weight", {"ip": VIP}) == 2
    assert weight("l3lb_address_weight", {"ip": "10.0.100.8"}) is None, "Cluster IPs on lo carry no weight"
    assert rig.agent.metrics.registry.get_sample_value("l3lb_netlink_repairs_total") == 0
    assert rig.agent.placement.moved == {}, "moves older than WEIGHT_HOLD are forgotten"


# ---- hold-down and drain: timers that end on their own, with the loop woken then


def ops_log(rig: Rig) -> list[tuple[float, str, str, str]]:
    """Every request the table gets, as (time, "set"|"del", ip, interface)."""
    ops: list[tuple[float, str, str, str]] = []
    real_set, real_remove = rig.table.set, rig.table.remove

    def logged_set(ip: str, lifetime: int, interface: str = "lo") -> None:
        ops.append((rig.clock.now, "set", ip, interface))
        real_set(ip, lifetime, interface)

    def logged_remove(ip: str, interface: str = "lo") -> None:
        ops.append((rig.clock.now, "del", ip, interface))
        real_remove(ip, interface)

    rig.table.set, rig.table.remove = logged_set, logged_remove  # type: ignore[method-assign]
    return ops


def adds_and_removals(
    ops: list[tuple[float, str, str, str]], since: float = 0, until: float = float("inf")
) -> list[tuple[float, str, str]]:
    """What changed on the interfaces from ``since`` to before ``until`` (renewals left out: a set of what
    is there already). The script's end is a stop, which drains: tests look before it."""
    out, where = [], {}
    for t, op, ip, interface in ops:
        if op == "set" and where.get(ip) == interface:
            continue
        where[ip] = interface if op == "set" else None
        if since <= t < until:
            out.append((t, op, interface))
    return out


def sample(rig: Rig, name: str) -> float:
    """A metric's value, 0 when it has none; ``name`` as Prometheus writes it: 'a_total{reason="x"}'."""
    name, _, labels = name.partition("{")
    pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
    found = rig.agent.metrics.registry.get_sample_value(name, {k: v.strip('"') for k, v in pairs.items()})
    return found or 0.0


HELD = Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=60, announce_hold_down=10.0)


def test_the_hold_down_announces_only_what_lasts_and_wakes_the_loop_when_it_ends() -> None:
    """--announce-hold-down 10: a pod flapping every 2 s for a minute is never announced (each flip that
    ended a hold-down early is counted), and once it stays ready its IP goes out exactly 10 s after, woken
    by the timer and not by a resync; withdrawals never wait."""
    rig = make_agent(config=HELD)
    ops = ops_log(rig)
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[]))
    flip = [slice_obj("s", "web", [("n1", ready, False)]) for ready in (True, False)]
    for k in range(30):  # ready at 1001, not ready at 1003, ready at 1005, ...
        rig.inbox.at(1001 + 2 * k, lambda k=k: rig.agent.sink(SLICES, "SET", slice_e(flip[k % 2])))
    rig.inbox.at(1061, lambda: rig.agent.sink(SLICES, "SET", slice_e(flip[0])))  # and stays ready
    rig.inbox.at(1075, lambda: rig.agent.sink(SLICES, "SET", slice_e(flip[1])))
    rig.inbox.at(1075.001, lambda: None)
    rig.agent.run()
    assert adds_and_removals(ops) == [(1071.0, "set", "lo"), (1075.0, "del", "lo")]
    assert sample(rig, "l3lb_suppressed_announcements_total") == 15
    assert rig.inbox.waits.count(0.0) < 10, "the loop waited for the timer, it did not poll"


def test_an_annotation_overrides_the_hold_down_and_what_is_out_already_is_not_held_down() -> None:
    """The Service's own 2s wins over the agents' 10s. An IP that is on lo at start is adopted, not held
    down; one removed by someone else is put back at once (a repair, not an announcement)."""
    rig = make_agent((VIP,), config=HELD)
    ops = ops_log(rig)
    api = svc_obj("api", ["10.0.100.8"], policy="Cluster", hold="2s")
    api_ready = slice_obj("a", "api", [("n2", True, False)])
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1001, lambda: rig.agent.sink(SERVICES, "SET", service_entry(api)))
    rig.inbox.at(1001, lambda: rig.agent.sink(SLICES, "SET", slice_e(api_ready)))

    def someone_deletes() -> None:
        rig.table.remove(VIP)
        netlink(rig.agent, "del", VIP)

    rig.inbox.at(1005, someone_deletes)
    rig.inbox.at(1005.001, lambda: None)
    rig.agent.run()
    changes = [(t, op, ip) for t, op, ip, _ in ops if (t, op) != (1000, "set") or ip != VIP]
    assert (1003.0, "set", "10.0.100.8") in changes and all(t >= 1003 for t, _, ip in changes if ip != VIP)
    assert (1005.0, "set", VIP) in changes, "repaired at once"
    assert VIP in rig.table.dump() and sample(rig, "l3lb_netlink_repairs_total") == 1


DRAINING = Config(prefixes=CFG.prefixes, node_name="n1", address_lifetime=9, drain_seconds=30)


def drain_node(rig: Rig, value: str | None) -> Callable[[], None]:
    annotations = {} if value is None else {"l3lb.io/drain": value}
    return lambda: rig.agent.sink(NODE, "SET", node_entry(node_obj(annotations=annotations)))


def test_a_drained_node_advertises_from_the_drain_interface_then_withdraws() -> None:
    """l3lb.io/drain=true: the IP moves to l3lbdrain (the delete first, in one batch), is renewed there,
    and goes exactly drain-seconds later; the gauge of when says so meanwhile. Undrained, the next time,
    it comes back to lo at once."""
    rig = make_agent(config=DRAINING)
    ops = ops_log(rig)
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1010, drain_node(rig, "true"))
    seen: dict[str, object] = {}
    rig.inbox.at(
        1020, lambda: seen.setdefault("gauge", sample(rig, f'l3lb_drain_until_seconds{{ip="{VIP}"}}'))
    )
    rig.inbox.at(1050, drain_node(rig, None))
    rig.inbox.at(1060, drain_node(rig, "true"))
    rig.inbox.at(1070, drain_node(rig, "false"))
    rig.inbox.at(1070.001, lambda: None)
    rig.agent.run()
    assert adds_and_removals(ops, until=1070.001) == [
        (1000.0, "set", "lo"),
        (1010.0, "del", "lo"),
        (1010.0, "set", "l3lbdrain"),
        (1040.0, "del", "l3lbdrain"),  # drained: gone
        (1050.0, "set", "lo"),  # undrained: back
        (1060.0, "del", "lo"),
        (1060.0, "set", "l3lbdrain"),
        (1070.0, "del", "l3lbdrain"),  # undrained before the end: back at once
        (1070.0, "set", "lo"),
    ]
    renewed = [t for t, op, _, i in ops if op == "set" and i == "l3lbdrain" and t < 1040]
    assert len(renewed) > 5 and max(b - a for a, b in itertools.pairwise(renewed)) < 9, "renewed there"
    assert 29 < float(seen["gauge"]) - time.time() <= 30, "when it goes (set at 1010), in Unix time"
    assert sample(rig, 'l3lb_drains_total{reason="nodeDraining"}') == 2
    assert sample(rig, 'l3lb_withdrawals_total{reason="nodeDraining"}') == 1
    assert sample(rig, "l3lb_weight_moves_total") == 0


def test_a_reason_that_is_not_graceful_withdraws_a_draining_ip_at_once() -> None:
    rig = make_agent(config=DRAINING)
    ops = ops_log(rig)
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1010, drain_node(rig, "true"))
    gone = slice_obj("s", "web", [("n1", False, False)])
    rig.inbox.at(1015, lambda: rig.agent.sink(SLICES, "SET", slice_e(gone)))
    rig.inbox.at(1015.001, lambda: None)
    rig.agent.run()
    assert adds_and_removals(ops, since=1001, until=1015.001) == [
        (1010.0, "del", "lo"),
        (1010.0, "set", "l3lbdrain"),
        (1015.0, "del", "l3lbdrain"),
    ]
    assert not rig.agent.timers.draining


def test_undrained_with_a_hold_down_it_drains_on_until_the_hold_down_ends() -> None:
    """Back from a drain counts as an announcement: with a hold-down it stays on l3lbdrain (routers keep
    preferring the others) until the hold-down ends, then moves to lo."""
    config = Config(
        prefixes=CFG.prefixes, node_name="n1", address_lifetime=9, drain_seconds=30, announce_hold_down=5.0
    )
    rig = make_agent((VIP,), config=config)
    ops = ops_log(rig)
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1010, drain_node(rig, "true"))
    rig.inbox.at(1020, drain_node(rig, None))
    rig.inbox.at(1025.001, lambda: None)
    rig.agent.run()
    assert adds_and_removals(ops, since=1001, until=1025.001) == [
        (1010.0, "del", "lo"),
        (1010.0, "set", "l3lbdrain"),
        (1025.0, "del", "l3lbdrain"),
        (1025.0, "set", "lo"),
    ]


def test_a_stop_drains_first_and_a_second_one_ends_the_drain() -> None:
    """SIGTERM with --drain-seconds 30: the loop goes on while the IP drains from l3lbdrain and ends when
    the drain is over (the daemon then withdraws what is left); a second SIGTERM ends it at once. With
    nothing held, or --drain-seconds 0, a stop ends the loop at once, as before."""
    for second in (None, 1012.0):
        rig = make_agent(config=DRAINING)
        ops = ops_log(rig)
        rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
        rig.inbox.at(1005, rig.agent.stop)
        if second is not None:
            rig.inbox.at(second, rig.agent.stop)
        rig.inbox.at(1100, lambda: None)  # never reached: the loop ends first
        rig.agent.run()
        assert adds_and_removals(ops, since=1001)[:2] == [(1005.0, "del", "lo"), (1005.0, "set", "l3lbdrain")]
        assert rig.clock.now == (1035.0 if second is None else second)
        assert (VIP in rig.table.dump()) is (second is not None), "after a full drain, withdrawn by the loop"
    for config, present in ((CFG, (VIP,)), (DRAINING, ())):
        rig = make_agent(present, config=config)
        rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY] if present else []))
        rig.inbox.at(1005, rig.agent.stop)
        rig.inbox.at(1100, lambda: None)
        rig.agent.run()
        assert rig.clock.now == 1005.0


class NodeEvents(Events):
    def event(
        self, key: tuple[str, str], uid: str, kind: str, reason: str, message: str, involved: str = "Service"
    ) -> None:
        self.seen.append((kind, reason, f"{involved}/{key[1]}", message))


def test_an_unreadable_drain_annotation_is_a_warning_once_and_no_drain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_agent(config=DRAINING)
    events = rig.agent.report.events = NodeEvents()
    rig.inbox.at(1000, lists(rig.agent, services=[WEB], slices=[WEB_READY]))
    rig.inbox.at(1001, drain_node(rig, "yes"))
    rig.inbox.at(
        1002,
        lambda: rig.agent.sink(
            NODE, "SET", node_entry(node_obj(annotations={"l3lb.io/drain": "yes"}, labels={"x": "y"}))
        ),
    )
    rig.inbox.at(1003, drain_node(rig, "please"))
    seen: dict[str, str] = {}
    rig.inbox.at(1003.001, lambda: seen.setdefault("where", rig.table.dump()[VIP].interface))
    with caplog.at_level(logging.WARNING, logger="l3lb"):
        rig.agent.run()
    assert seen["where"] == "lo", "no drain, no flap"
    warnings = [e for e in events.seen if e[0] == "Warning"]
    assert [(k, r, who) for k, r, who, _ in warnings] == [("Warning", "InvalidAnnotation", "Node/n1")] * 2
    assert "'yes' is neither true nor false" in warnings[0][3] and "'please'" in warnings[1][3]
    assert sum("l3lb.io/drain" in r.getMessage() for r in caplog.records) == 2
