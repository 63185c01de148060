"""The real interface table (pyroute2) in a network namespace: the monitor reports what others change and
drops the echoes of our own writes, and survives any error in its thread."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from netns import NetNS

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent

# Runs inside the namespace: our writes through the table, "someone else's" with the ip command.
SCRIPT = """
import json, subprocess, sys, threading, time
import l3lb.apply as apply
from l3lb.apply import NetlinkTable

got = []
seen = threading.Event()
t = NetlinkTable("lo")
if sys.argv[1] == "fail-once":  # the monitor meets an exception that is not an OSError
    real, calls = apply.parse_address, []
    def once(kind, payload):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unexpected message")
        return real(kind, payload)
    apply.parse_address = once

def on_change(kind, ip, present):
    got.append([kind, ip, t.monitor_health()])
    if ip == "10.0.100.9":
        seen.set()

t.monitor(on_change)
assert t.monitoring.wait(5)
ip = lambda *a: subprocess.run(["ip", *a], check=True)
if sys.argv[1] == "fail-once":
    ip("addr", "add", "10.0.100.8/32", "dev", "lo")  # the message that makes the monitor fail
    deadline = time.monotonic() + 5
    while t.monitor_health() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    health_while_failing = t.monitor_health()
    time.sleep(0.5)
    assert t.monitoring.wait(5)
    got.append(["health", health_while_failing, t.monitor_health()])
else:
    t.set("10.0.100.1", 60, "lo")      # ours: add
    t.set("10.0.100.1", 60, "lo")      # ours: renew
    t.remove("10.0.100.1", "lo")       # ours: remove
    t.remove("10.0.100.1", "lo")       # ours: nothing to remove, no echo to expect
    ip("addr", "add", "10.0.100.2/32", "dev", "lo")   # someone else
    ip("addr", "del", "10.0.100.2/32", "dev", "lo")
    t.set("10.0.100.3", 60, "lo")
    ip("addr", "del", "10.0.100.3/32", "dev", "lo")   # someone else removes ours
ip("addr", "add", "10.0.100.9/32", "dev", "lo")       # the end marker
assert seen.wait(5)
print(json.dumps(got))
"""


def run(tmp_path: Path, mode: str) -> list:
    with NetNS(tmp_path) as ns:
        out = ns.run([sys.executable, "-c", SCRIPT, mode], timeout=60)
    return json.loads(out.stdout)


def test_monitor_reports_others_changes_and_drops_the_echoes_of_ours(tmp_path: Path) -> None:
    assert run(tmp_path, "echoes") == [
        ["add", "10.0.100.2", None],
        ["del", "10.0.100.2", None],
        ["del", "10.0.100.3", None],
        ["add", "10.0.100.9", None],
    ]


def test_monitor_survives_any_error_reports_it_and_asks_for_a_reread(tmp_path: Path) -> None:
    got = run(tmp_path, "fail-once")
    health = next(g for g in got if g[0] == "health")
    assert health[1] and "RuntimeError" in health[1], "/healthz says so while the monitor restarts"
    assert health[2] is None, "and is healthy again once it listens"
    kinds = [g[0] for g in got if g[0] != "health"]
    assert kinds == ["lost", "add"], got  # after the restart: re-read the interface, then events flow again
