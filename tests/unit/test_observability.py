"""systemd notification, health, JSON logs: without a cluster."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

from objects import node_obj

from l3lb.cli.logs import JsonFormatter
from l3lb.config import Config, parse_prefixes
from l3lb.model import NODE, SERVICES, SLICES, node_entry
from l3lb.netlink.tables import MemoryTable
from l3lb.node.agent import Agent
from l3lb.systemd import Notifier

CFG = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1")


def listen(tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_notifier_speaks_the_systemd_protocol(tmp_path: Path) -> None:
    sock, path = listen(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_interval == 1.5
    n.send("READY=1", "STATUS=hi")
    assert sock.recv(100) == b"READY=1\nSTATUS=hi"
    assert (
        Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}).watchdog_interval is None
    )
    silent = Notifier({})
    assert not silent.enabled
    silent.send("READY=1")  # no socket: nothing happens


def test_abstract_socket(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0l3lb-test-{tmp_path.name}")
    sock.settimeout(5)
    Notifier({"NOTIFY_SOCKET": f"@l3lb-test-{tmp_path.name}"}).send("WATCHDOG=1")
    assert sock.recv(100) == b"WATCHDOG=1"


def test_agent_sends_ready_at_adoption_the_status_after_the_initial_sync_then_stopping(
    tmp_path: Path,
) -> None:
    """READY=1 before the API is listed (the agent holds what it adopted), STATUS once it has synced."""
    sock, path = listen(tmp_path)
    agent = Agent(CFG, MemoryTable(), notifier=Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}))
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        assert sock.recv(100) == b"WATCHDOG=1"  # pings start before any sync
        assert sock.recv(100) == b"READY=1\nSTATUS=holding 0 adopted addresses; waiting for the API"
        agent.sink(SERVICES, "REPLACE", [])
        agent.sink(SLICES, "REPLACE", [])
        agent.sink(NODE, "REPLACE", [node_entry(node_obj())])
        seen = [sock.recv(100) for _ in range(4)]
        assert b"STATUS=holding 0 addresses" in seen and not any(b"READY" in m for m in seen)
        assert agent.health() is None
    finally:
        agent.stop()
        thread.join(5)
    rest = []
    sock.settimeout(0.5)
    while True:
        try:
            rest.append(sock.recv(100))
        except TimeoutError:
            break
    assert rest[-1] == b"STOPPING=1"


def test_health_reports_a_stuck_loop_and_a_stuck_watch() -> None:
    now = [100.0]
    agent = Agent(CFG, MemoryTable(), clock=lambda: now[0])

    class W:
        resource = "services"
        last_progress = 100.0
        stuck_after = 60.0

    agent.watched = [W()]
    assert agent.health() is None
    now[0] = 140.0
    assert agent.health() == "sync loop stuck for 40s"
    agent.last_loop = 140.0
    now[0] = 170.0
    agent.last_loop = 170.0
    assert agent.health() == "watch of services without progress for 70s"


def test_json_logs() -> None:
    record = logging.LogRecord(
        "l3lb.node.agent", logging.INFO, __file__, 1, "assuming %s", ("10.0.100.5",), None
    )
    out = json.loads(JsonFormatter().format(record))
    assert (
        out["level"] == "info" and out["logger"] == "l3lb.node.agent" and out["msg"] == "assuming 10.0.100.5"
    )
    assert out["time"].endswith("Z")
