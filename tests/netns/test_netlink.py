"""The kernel side of the agent in a network namespace: rtnl's requests as the kernel answers them, the
monitor reporting what others change and dropping the echoes of our own writes (and surviving any error in
its thread), the dump reading what pyroute2 reads, and a weighted agent's moves and class interfaces."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
from netns import NetNS

from l3lb.netlink import rtnl

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]

# Runs inside the namespace: our requests through Presence and the table, "someone else's" with the ip
# command; what reaches the loop's inbox is recorded.
SCRIPT = """
import json, subprocess, sys, threading, time
import l3lb.netlink.rtnl as rtnl
from l3lb.netlink.tables import NetlinkTable
from l3lb.node.plan import Plan
from l3lb.config import Config, parse_prefixes
from l3lb.node.presence import Presence

got = []
seen = threading.Event()
t = NetlinkTable("lo")
config = Config(prefixes=parse_prefixes(["10.0.100.0/24", "fd00:100::/64"]), node_name="n1")
if sys.argv[1] == "fail-once":  # the monitor meets an exception that is not an OSError
    real, calls = rtnl.parse_address, []
    def once(kind, payload):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unexpected message")
        return real(kind, payload)
    rtnl.parse_address = once

def inbox(m):
    got.append([getattr(m, "kind", "lost"), getattr(m, "ip", ""), t.monitor_health()])
    if getattr(m, "ip", "") == "10.0.100.9":
        seen.set()

p = Presence(config, t, sink=inbox)
ip = lambda *a: subprocess.run(["ip", *a], check=True)
if sys.argv[1] == "stale-echoes":  # requests made before the monitor listens: their echoes never come
    p.apply(Plan(add=[("10.0.100.7", "lo"), ("fd00:100::7", "lo")]))
p.start_monitor()
if sys.argv[1] == "fail-once":
    ip("addr", "add", "10.0.100.8/32", "dev", "lo")  # the message that makes the monitor fail
    deadline = time.monotonic() + 5
    while t.monitor_health() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    health_while_failing = t.monitor_health()
    time.sleep(0.5)
    assert t.monitoring.wait(5)
    got.append(["health", health_while_failing, t.monitor_health()])
elif sys.argv[1] == "stale-echoes":  # someone else changes them: every change is reported
    for a in ("10.0.100.7/32", "fd00:100::7/128"):
        ip("addr", "del", a, "dev", "lo")
        ip("addr", "add", a, "dev", "lo")
else:
    for a in ("10.0.100.1", "fd00:100::1"):
        p.apply(Plan(add=[(a, "lo")]))     # ours: add
        p.apply(Plan(renew=[(a, "lo")]))   # ours: renew
        p.apply(Plan(remove=[(a, "lo")]))  # ours: remove
        p.apply(Plan(remove=[(a, "lo")]))  # ours: nothing to remove, no echo to expect
    for a in ("10.0.100.2/32", "fd00:100::2/128"):
        ip("addr", "add", a, "dev", "lo")   # someone else
        ip("addr", "del", a, "dev", "lo")
    p.apply(Plan(add=[("10.0.100.3", "lo")]))
    ip("addr", "del", "10.0.100.3/32", "dev", "lo")   # someone else removes ours
ip("addr", "add", "10.0.100.9/32", "dev", "lo")       # the end marker
assert seen.wait(5)
print(json.dumps(got))
"""


def run(tmp_path: Path, mode: str) -> list:
    """What reached the inbox; a repeat in a row counts once (the kernel notifies an IPv6 address that the
    ip command adds twice: added, then done with duplicate address detection)."""
    with NetNS(tmp_path) as ns:
        out = ns.run([sys.executable, "-c", SCRIPT, mode], timeout=60)
    got = json.loads(out.stdout)
    return [g for i, g in enumerate(got) if i == 0 or g != got[i - 1]]


def test_monitor_reports_others_changes_and_drops_the_echoes_of_ours(tmp_path: Path) -> None:
    """IPv4 echoes are known by our port id, IPv6 ones by what we expect; both are dropped."""
    assert run(tmp_path, "echoes") == [
        ["add", "10.0.100.2", None],
        ["del", "10.0.100.2", None],
        ["add", "fd00:100::2", None],
        ["del", "fd00:100::2", None],
        ["del", "10.0.100.3", None],
        ["add", "10.0.100.9", None],
    ]


def test_echoes_expected_before_the_monitor_listens_swallow_nothing(tmp_path: Path) -> None:
    """Requests made before the monitor (re)starts never echo to it: someone else's changes to the same
    addresses right after are all reported. (Expected echoes once outlived a restart and swallowed them.)"""
    assert run(tmp_path, "stale-echoes") == [
        ["del", "10.0.100.7", None],
        ["add", "10.0.100.7", None],
        ["del", "fd00:100::7", None],
        ["add", "fd00:100::7", None],
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
from l3lb.netlink import rtnl
from l3lb.netlink.tables import NetlinkTable, host_len

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
assert not any(rtnl.Requests().run((rtnl.RTM_NEWADDR, lo, a, 100) for a in [*many, "10.0.100.2"]))

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


# Runs inside the namespace: a weighted agent on real interfaces, fed by hand, its requests recorded.
WEIGHTED_SCRIPT = """
import json, socket, subprocess, sys, threading, time
sys.path.insert(0, "tests/support")
from objects import node_obj, slice_obj, svc_obj
from l3lb.netlink import rtnl
from l3lb.node.agent import Agent
from l3lb.netlink.tables import NetlinkTable
from l3lb.config import Config, parse_prefixes
from l3lb.model import NODE, SERVICES, SLICES, node_entry, service_entry, slice_entry

VIP = "10.0.100.7"
classes = ("l3lbw1", "l3lbw2")
table = NetlinkTable("lo", classes)


class Spy:
    '''The request socket, recording each datagram as [(kind, interface index, ip), ...].'''

    def __init__(self, sock):
        self.sock, self.sent = sock, []

    def send(self, data):
        sent = []
        for kind, *_, payload in rtnl.messages(data):
            a = rtnl.parse_address(kind, payload)
            if a is not None:
                sent.append([kind, a.index, a.ip])
        self.sent.append(sent)
        return self.sock.send(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


spy = table.requests.sock = Spy(table.requests.sock)
config = Config(prefixes=parse_prefixes(["10.0.100.0/24"]), node_name="n1", weight_classes=2)
agent = Agent(config, table)
threading.Thread(target=agent.run, daemon=True).start()
look = NetlinkTable("lo", classes, create=False)


def wait_on(name, timeout=5.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        have = look.dump().get(VIP)
        if have is not None and have.interface == name:
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def endpoints(n):
    return slice_entry("n1")(slice_obj("s", "web", [("n1", True, False)] * n))


agent.sink(SERVICES, "REPLACE", [service_entry(svc_obj("web", [VIP]))])
agent.sink(SLICES, "REPLACE", [endpoints(1)])
agent.sink(NODE, "REPLACE", [node_entry(node_obj())])
wait_on("l3lbw1")
index = {name: socket.if_nametoindex(name) for name in classes}
agent.sink(SLICES, "SET", endpoints(2))
wait_on("l3lbw2")
move = [d for d in spy.sent if [rtnl.RTM_DELADDR, index["l3lbw1"], VIP] in d]
subprocess.run(["ip", "link", "del", "l3lbw2"], check=True)
start = time.monotonic()
while "l3lbw2" not in [name for _, name in socket.if_nameindex()] and time.monotonic() - start < 5:
    time.sleep(0.01)
look = NetlinkTable("lo", classes, create=False)
back = wait_on("l3lbw2", 5 - (time.monotonic() - start))
agent.stop()
print(json.dumps({"move": move, "index": index, "back": back and time.monotonic() - start}))
"""


def test_weighted_moves_are_one_datagram_and_a_deleted_class_interface_is_made_again(tmp_path: Path) -> None:
    """A move between weight classes is a removal and an add in one datagram (no crash of the agent can
    leave the address on neither interface); and when someone deletes a class interface, the agent makes
    it again and puts its addresses back within a second (it once met ENODEV on every add, forever)."""
    with NetNS(tmp_path) as ns:
        out = ns.run([sys.executable, "-c", WEIGHTED_SCRIPT], timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout)
    del1 = [21, got["index"]["l3lbw1"], "10.0.100.7"]
    add2 = [20, got["index"]["l3lbw2"], "10.0.100.7"]
    together = [(d[k], d[k + 1]) for d in got["move"] for k in range(len(d) - 1)]
    assert (del1, add2) in together, f"the removal and the add in one datagram: {got['move']}"
    assert got["back"] is not None and got["back"] < 1.0, got


def test_requests_against_the_kernel(tmp_path: Path) -> None:
    """In a namespace: a batch adds and renews, a refused request reports its errno, a removal of an
    absent address says it is gone."""
    script = """
import json, socket
from l3lb.netlink import rtnl
lo = socket.if_nametoindex("lo")
r = rtnl.Requests()
ips = [f"10.7.{i // 250}.{i % 250 + 1}" for i in range(450)] + ["fd00:7::1"]
out = {"add": r.run((rtnl.RTM_NEWADDR, lo, ip, 30) for ip in ips)}
out["renew"] = r.run((rtnl.RTM_NEWADDR, lo, ip, 60) for ip in ips)
out["bad"] = r.run([(rtnl.RTM_NEWADDR, 999999, "10.7.9.9", 30)])
out["del"] = r.run([(rtnl.RTM_DELADDR, lo, "10.7.0.1", 0), (rtnl.RTM_DELADDR, lo, "10.7.0.1", 0)])
print(json.dumps(out))
"""
    with NetNS(tmp_path) as ns:
        out = ns.run([sys.executable, "-c", script]).stdout
        addrs = ns.addresses()
    got = json.loads(out)
    assert got["add"] == got["renew"] == [0] * 451
    (bad,) = got["bad"]
    assert bad > 0, "a refused request reports its errno"
    assert got["del"][0] == 0 and got["del"][1] in rtnl.GONE, "the second removal finds nothing"
    held = {
        a["local"]: a for a in addrs if a["prefixlen"] in (32, 128) and a["local"] not in ("127.0.0.1", "::1")
    }
    assert len(held) == 450 and "10.7.0.1" not in held
    assert 50 < held["10.7.0.2"]["valid_life_time"] <= 60, "renewed to 60 s"


def test_the_extra_interfaces_are_made_without_pyroute2(tmp_path: Path) -> None:
    """The weight-class and drain interfaces, up, made by the agent's own RTM_NEWLINK (pyroute2 never
    loaded: it costs every agent 11 MiB, and every agent makes l3lbdrain by default): dummies, or veth pairs
    where the kernel has no dummy driver (as here); a second start finds them; a veth pair made by hand as
    the agent does has both ends up; a refusal is an error that names the interface."""
    script = """
import json, socket, subprocess, sys
from l3lb.netlink import rtnl
from l3lb.netlink.tables import NetlinkTable
t = NetlinkTable("lo", ("l3lbw1", "l3lbdrain"))
again = NetlinkTable("lo", ("l3lbw1", "l3lbdrain"))
r = rtnl.Requests()
veth = r.link(name="l3lbw2", kind="veth", peer="l3lbw2p") or r.link(index=socket.if_nametoindex("l3lbw2p"))
twice = r.link(name="l3lbw2", kind="veth", peer="l3lbw2p")
try:
    NetlinkTable("lo", ("x" * 20,))  # longer than IFNAMSIZ
    refused = None
except OSError as err:
    refused = str(err)
links = {l["ifname"]: l for l in json.loads(subprocess.run(["ip", "-j", "-d", "link"], capture_output=True,
    text=True, check=True).stdout)}
print(json.dumps({"t": t.indices, "again": again.indices, "veth": veth, "twice": twice, "refused": refused,
    "pyroute2": "pyroute2" in sys.modules, "links": {n: [l["flags"], l.get("linkinfo", {}).get("info_kind")]
    for n, l in links.items()}}))
"""
    with NetNS(tmp_path) as ns:
        got = json.loads(ns.run([sys.executable, "-c", script], timeout=30).stdout)
    assert not got["pyroute2"]
    assert got["t"] == got["again"] and set(got["t"]) == {"lo", "l3lbw1", "l3lbdrain"}
    for name in ("l3lbw1", "l3lbdrain"):
        flags, kind = got["links"][name]
        assert kind in ("dummy", "veth") and "UP" in flags, got["links"]
        if kind == "veth":
            assert "UP" in got["links"][f"{name}p"][0], got["links"]
    assert got["veth"] == 0 and got["twice"] == errno.EEXIST
    for name in ("l3lbw2", "l3lbw2p"):
        flags, kind = got["links"][name]
        assert kind == "veth" and "UP" in flags, got["links"]
    assert got["refused"] and "cannot make interface xxxxxxxxxxxxxxxxxxxx" in got["refused"]
