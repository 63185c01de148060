"""The real interface table in a network namespace: the monitor reports what others change and drops the
echoes of our own writes, and survives any error in its thread; the dump reads what pyroute2 reads."""

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
    t.set_many(["10.0.100.1"], 60, "lo")  # ours: add
    t.set_many(["10.0.100.1"], 60, "lo")  # ours: renew
    t.remove("10.0.100.1", "lo")       # ours: remove
    t.remove("10.0.100.1", "lo")       # ours: nothing to remove, no echo to expect
    ip("addr", "add", "10.0.100.2/32", "dev", "lo")   # someone else
    ip("addr", "del", "10.0.100.2/32", "dev", "lo")
    t.set_many(["10.0.100.3"], 60, "lo")
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


DUMP_SCRIPT = """
import ipaddress, json, socket, subprocess
from pyroute2 import IPRoute
from l3lb import rtnl
from l3lb.apply import NetlinkTable, host_len

ip = lambda *a: subprocess.run(["ip", *a], check=True)
ip("link", "add", "l3lbw1", "type", "veth", "peer", "name", "l3lbw1p")
ip("link", "set", "l3lbw1", "up")
for a in ["10.0.100.1/32", "10.0.5.1/24", "fd00:100::1/128", "fd00:5::1/64"]:
    ip("addr", "add", a, "dev", "lo")
ip("addr", "add", "fd00:100::2/128", "dev", "lo", "valid_lft", "200", "preferred_lft", "200")
ip("addr", "add", "10.0.100.2/32", "dev", "l3lbw1")  # a second copy, on the later interface
ip("addr", "add", "10.0.100.3/32", "dev", "l3lbw1")
lo = socket.if_nametoindex("lo")
many = [f"10.0.{101 + i // 250}.{i % 250 + 1}" for i in range(1200)]  # a dump of many datagrams
assert rtnl.Requests().run((rtnl.RTM_NEWADDR, lo, a, 100) for a in [*many, "10.0.100.2"]) == {}

t = NetlinkTable("lo", ("l3lbw1",), create=False)
ours = t.dump()
ref, dup = {}, []
with IPRoute() as ipr:
    for name in ("lo", "l3lbw1"):
        for msg in ipr.get_addr(index=ipr.link_lookup(ifname=name)[0]):
            a = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if msg["prefixlen"] != host_len(a):
                continue
            a = str(ipaddress.ip_address(a))
            valid = msg.get_attr("IFA_CACHEINFO")["ifa_valid"]
            if a in ref:
                dup.append([a, name])
            else:
                ref[a] = [name, None if valid == rtnl.FOREVER else valid]
print(json.dumps({
    "ours": {a: [p.interface, p.expires] for a, p in ours.items()},
    "ref": ref, "dup": sorted(t.duplicates), "ref_dup": sorted(dup),
}))
"""


def test_the_dump_reads_what_pyroute2_reads(tmp_path: Path) -> None:
    """Host-length addresses only, on our interfaces only, each with its interface and lifetime; a second
    copy on a later interface is a duplicate; and a dump longer than one datagram is read whole."""
    import time

    with NetNS(tmp_path) as ns:
        before = time.monotonic()
        got = json.loads(ns.run([sys.executable, "-c", DUMP_SCRIPT], timeout=60).stdout)
        after = time.monotonic()
    ours, ref = got["ours"], got["ref"]
    assert ours.keys() == ref.keys() and len(ours) == 1200 + 6  # 127.0.0.1 and ::1 are host-length too
    for a, (interface, valid) in ref.items():
        assert ours[a][0] == interface, a
        if valid is None:
            assert ours[a][1] is None, a
        else:  # expires = (monotonic time of the dump) + valid
            assert before + valid - 2 <= ours[a][1] <= after + valid, (a, ours[a], valid)
    assert got["dup"] == got["ref_dup"] == [["10.0.100.2", "l3lbw1"]]
    assert ours["10.0.100.2"][0] == "lo" and "10.0.5.1" not in ours and "fd00:5::1" not in ours
