"""Side by side, at the same router: l3lb (an address on lo, the node's FRR redistributing it) and a direct
BGP speaker on the node, from a pod's Ready condition patched in the API to the router's kernel route,
with where the time goes, hop by hop.

One lab (tests/support/lab.py: the real control plane, two nodes with FRR, router R with FRR, BGP unnumbered),
one IPv4 Local-policy Service whose only pod is on node1, and ``--flips`` announces and as many withdraws per
path, the paths taking turns over ``--rounds`` rounds (one agent at a time):

- ``l3lb, lab FRR``: the l3lb agents, node FRR as the lab runs it (zebra's RIB work-queue hold at its
  default 10 ms, ``coalesce-time 100``);
- ``l3lb, recommended FRR``: the same with the node settings this bench recommends (RECOMMENDED below);
- ``FRR floor``: no agent, the /32 put on node1's lo by hand through netlink, under either node setting
  (the time starts at the netlink request);
- ``direct speaker``: no agent and no node FRR in the path: tests/support/refspeaker.py, a controller watching
  the Service's EndpointSlices through the same API relay as the agents, telling our GoBGP-based speaker
  (bench/refspeaker, GoBGP v3.37.0's server package) on node1 to add or withdraw the /32; the speaker
  peers R over numbered IPv4 on the same link (10.1.1.2 -> 10.1.1.1), R taking it into the same
  peer-group as the nodes;
- with ``--router-tuned`` (default on), the recommended l3lb and the direct speaker again with
  ``zebra work-queue 0`` on R: what R's operator can take off both.

Where the time goes comes from every transition's timestamps: the pod PATCH; the EndpointSlice change
delivered to a watcher in the bench; the address event on node1 (netlink); FRR's own debug log lines on
node1 and R (``log timestamp precision 6``: zebra queues the connected route, redistributes it, bgpd
receives it and forms the UPDATE; R's bgpd receives it and hands the route to zebra, R's zebra queues and
writes it to the kernel); the UPDATE on node1's and R's side of the link (AF_PACKET sockets with kernel
timestamps, one in each namespace); and R's kernel route event (netlink). Medians per hop are printed
and written with the samples to ``bench/results/peers.json``. Run as root::

    .venv/bin/python bench/peers.py [--flips 40] [--rounds 2] [--no-router-tuned] [--no-frr-debug]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]
sys.path.insert(0, str(REPO / "bench"))

import refspeaker  # noqa: E402
from convergence import InNetns  # noqa: E402
from kubernetes import config  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402
from lab import NAMESPACE, VIP, Lab  # noqa: E402
from netns import AddressEvents, NetNS, enter_netns, ip  # noqa: E402
from stats import pct  # noqa: E402
from testenv import cache_dir, interrupt_on_sigterm, versions  # noqa: E402

from l3lb.k8s.api import Api  # noqa: E402

PREFIX = f"{VIP}/32"
SERVICE = "echo"
LAB = {"work-queue": 10, "coalesce-time": 100}
RECOMMENDED = {"work-queue": 0, "coalesce-time": 0}
"""Node FRR settings: ``zebra work-queue N`` (zebra, hidden command) and ``coalesce-time N`` (router bgp)."""
REF_LOCAL, REF_ROUTER = "10.1.1.2", "10.1.1.1"
FRR_DEBUG = (
    "debug zebra rib detailed",
    "debug zebra events",
    "debug zebra dplane",
    "debug zebra kernel",
    "debug bgp zebra",
    "debug bgp updates",
)

# ---- clocks: FRR logs and packet timestamps are wall-clock, everything else time.monotonic()


def _wall_minus_mono() -> float:
    samples = []
    for _ in range(9):
        a = time.monotonic()
        w = time.time()
        b = time.monotonic()
        samples.append((b - a, w - (a + b) / 2))
    return min(samples)[1]


OFFSET = _wall_minus_mono()


def to_mono(wall: float) -> float:
    return wall - OFFSET


# ---- FRR's debug log

LOG_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) (ZEBRA|BGP): \[[^]]*\] (.*)$")


def frr_log(path: Path) -> list[tuple[float, str, str]]:
    """(monotonic time, daemon, message) of each line, in time order (two daemons write one file)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m:
            wall = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((to_mono(wall), m.group(2), m.group(3)))
    out.sort()
    return out


def _has(daemon: str, *parts: str, end: str | None = None) -> Callable[[str, str], bool]:
    def match(d: str, msg: str) -> bool:
        return d == daemon and all(p in msg for p in parts) and (end is None or msg.endswith(end))

    return match


# Markers in FRR 8.4's debug log, per direction: (name, where, matcher).
NODE_MARKERS = {
    "add": [
        ("zebra queued", _has("ZEBRA", f"Route {PREFIX}(0) queued for processing")),
        ("zebra redistributed", _has("ZEBRA", PREFIX, "Redist update", "(connected)")),
        ("bgpd received", _has("BGP", f"Rx route ADD VRF 0 connected[0] {PREFIX}")),
        ("bgpd UPDATE formed", _has("BGP", f"send UPDATE {PREFIX} IPv4 unicast", end="unicast")),
    ],
    "del": [
        ("zebra queued", _has("ZEBRA", f"Route {PREFIX}(0) queued for processing")),
        ("zebra redistributed", _has("ZEBRA", PREFIX, "Redist del", "connected")),
        ("bgpd received", _has("BGP", f"Rx route DEL VRF 0 connected[0] {PREFIX}")),
        ("bgpd UPDATE formed", _has("BGP", f"send UPDATE {PREFIX} IPv4 unicast -- unreachable")),
    ],
}
ROUTER_MARKERS = {
    "add": [
        ("R bgpd received", _has("BGP", f"rcvd {PREFIX} IPv4 unicast", end="unicast")),
        ("R bgpd to zebra", _has("BGP", f"Tx route add VRF 0 {PREFIX}")),
        ("R zebra queued", _has("ZEBRA", f"Route {PREFIX}(0) queued for processing")),
        ("R zebra to kernel", _has("ZEBRA", f"RTM_NEWROUTE {PREFIX}")),
    ],
    "del": [
        ("R bgpd received", _has("BGP", f"rcvd UPDATE about {PREFIX} IPv4 unicast -- withdrawn")),
        ("R bgpd to zebra", _has("BGP", f"Tx route delete VRF 0 {PREFIX}")),
        ("R zebra queued", _has("ZEBRA", f"Route {PREFIX}(0) queued for processing")),
        ("R zebra to kernel", _has("ZEBRA", f"RTM_DELROUTE {PREFIX}")),
    ],
}

# The hops, in path order: (from marker, to marker, what it is). A transition has the markers of its path.
HOPS = [
    ("PATCH", "EndpointSlice", "control plane: pod PATCH -> EndpointSlice delivered to a watcher"),
    ("EndpointSlice", "address on lo", "l3lb agent: slice -> address on lo"),
    ("EndpointSlice", "speaker told", "reference controller: slice -> command to the speaker"),
    ("speaker told", "UPDATE on node wire", "GoBGP: command -> UPDATE on the wire"),
    ("address on lo", "zebra queued", "node zebra: netlink address -> connected route queued"),
    ("zebra queued", "zebra redistributed", "node zebra: RIB work queue (hold) -> redistribute"),
    ("zebra redistributed", "bgpd received", "node zebra -> bgpd (zapi)"),
    ("bgpd received", "bgpd UPDATE formed", "node bgpd: process queue (hold 50) -> UPDATE formed"),
    ("bgpd UPDATE formed", "UPDATE on node wire", "node bgpd: UPDATE formed -> on the wire"),
    ("UPDATE on node wire", "UPDATE at R's wire", "the link (veth)"),
    ("UPDATE at R's wire", "R bgpd received", "R bgpd: read and parse"),
    ("R bgpd received", "R bgpd to zebra", "R bgpd: process queue (hold 50) -> route to zebra"),
    ("R bgpd to zebra", "R zebra queued", "R bgpd -> zebra (zapi)"),
    ("R zebra queued", "R zebra to kernel", "R zebra: RIB work queue (hold) -> netlink"),
    ("R zebra to kernel", "R kernel route", "R kernel: route in the table (netlink event)"),
]
WHAT_SETS_IT = {  # with FRR 8.4.4's source lines (Debian 12's frr 8.4.4)
    "node zebra: RIB work queue (hold) -> redistribute": "zrouter.ribq->spec.hold = "
    "ZEBRA_RIB_PROCESS_HOLD_TIME (10, zebra_router.h:179, zebra_rib.c:3714); `zebra work-queue 0` sets it "
    "(zebra_vty.c:3835)",
    "node bgpd: process queue (hold 50) -> UPDATE formed": "bgp->process_queue->spec.hold = 50 "
    "(bgp_route.c:3402); no command sets it, in 8.4 and up to FRR 10.7 and master",
    "R bgpd: process queue (hold 50) -> route to zebra": "the same constant in R's bgpd",
    "R zebra: RIB work queue (hold) -> netlink": "R zebra's own 10 ms hold: `zebra work-queue 0` on R",
}
SPANS = [
    ("PATCH", "R kernel route", "total"),
    ("address on lo", "UPDATE on node wire", "node FRR: address -> UPDATE on the wire"),
    ("UPDATE on node wire", "R kernel route", "R: UPDATE on the wire -> kernel route"),
]

# ---- the UPDATE on the wire


def bgp_updates(payload: bytes) -> list[tuple[str, str]]:
    """(add|del, prefix) for every prefix in the BGP UPDATE messages that start in a TCP payload."""
    out: list[tuple[str, str]] = []
    while len(payload) >= 19 and payload[:16] == b"\xff" * 16:
        length, kind = struct.unpack("!HB", payload[16:19])
        body, payload = payload[19:length], payload[length:]
        if kind != 2 or len(body) < 4:
            continue
        wlen = struct.unpack("!H", body[:2])[0]
        out += [("del", p) for p in _prefixes(1, body[2 : 2 + wlen])]
        alen = struct.unpack("!H", body[2 + wlen : 4 + wlen])[0]
        attrs, nlri = body[4 + wlen : 4 + wlen + alen], body[4 + wlen + alen :]
        out += [("add", p) for p in _prefixes(1, nlri)]
        while len(attrs) >= 3:
            flags, code = attrs[0], attrs[1]
            if flags & 0x10:
                alen, head = struct.unpack("!H", attrs[2:4])[0], 4
            else:
                alen, head = attrs[2], 3
            value, attrs = attrs[head : head + alen], attrs[head + alen :]
            if code == 14 and len(value) >= 5:  # MP_REACH_NLRI: afi, safi, next hop, reserved, NLRI
                afi, nhlen = struct.unpack("!H", value[:2])[0], value[3]
                out += [("add", p) for p in _prefixes(afi, value[5 + nhlen :])]
            elif code == 15 and len(value) >= 3:  # MP_UNREACH_NLRI: afi, safi, withdrawn
                out += [("del", p) for p in _prefixes(struct.unpack("!H", value[:2])[0], value[3:])]
    return out


def _prefixes(afi: int, data: bytes) -> list[str]:
    size, family = (4, socket.AF_INET) if afi == 1 else (16, socket.AF_INET6)
    out = []
    while data:
        bits = data[0]
        n = (bits + 7) // 8
        address = socket.inet_ntop(family, data[1 : 1 + n].ljust(size, bytes(1)))
        out.append(f"{address}/{bits}")
        data = data[1 + n :]
    return out


def tcp_payload(frame: bytes) -> bytes | None:
    """The TCP payload of an Ethernet frame to or from port 179, else None."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0800:
        ihl, total, proto = (frame[14] & 0xF) * 4, struct.unpack("!H", frame[16:18])[0], frame[23]
        segment = frame[14 + ihl : 14 + total]
    elif ethertype == 0x86DD:
        proto, plen = frame[20], struct.unpack("!H", frame[18:20])[0]
        segment = frame[54 : 54 + plen]
    else:
        return None
    if proto != 6 or len(segment) < 20:
        return None
    sport, dport = struct.unpack("!HH", segment[:4])
    if 179 not in (sport, dport):
        return None
    return segment[(segment[12] >> 4) * 4 :]


class Wire:
    """BGP UPDATEs carrying ``PREFIX`` on one interface of a namespace: ``events`` = [(time, add|del)],
    timed by the kernel as the frame passed (SO_TIMESTAMPNS)."""

    SO_TIMESTAMPNS = 35

    def __init__(self, ns: NetNS, ifname: str) -> None:
        self.events: list[tuple[float, str]] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(ns.name, ifname), daemon=True).start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"could not capture on {ifname} in {ns.name}: {self._error}")

    def _run(self, ns: str, ifname: str) -> None:
        try:
            enter_netns(ns)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
            sock.setsockopt(socket.SOL_SOCKET, self.SO_TIMESTAMPNS, 1)
            sock.bind((ifname, 0))
        except BaseException as err:
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        while True:
            frame, ancillary, _, _ = sock.recvmsg(1 << 16, 256)
            wall = time.time()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == self.SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    wall = sec + nsec / 1e9
            payload = tcp_payload(frame)
            if payload:
                for op, prefix in bgp_updates(payload):
                    if prefix == PREFIX:
                        self.events.append((to_mono(wall), op))


# ---- the EndpointSlice as the apiserver delivers it


class SliceWatch:
    """When the apiserver delivers each change of the Service's EndpointSlices to a watcher in the bench:
    ``events`` = [(time, node1 has a ready endpoint)]."""

    def __init__(self, kubeconfig: str, node: str) -> None:
        self.events: list[tuple[float, bool]] = []
        self.api = Api(config.new_client_from_config(kubeconfig))
        self.node = node
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:  # until the bench ends (a daemon thread); a watch that ends or fails is made again
            try:
                self._watch()
            except Exception:  # the apiserver going away at the end, mostly
                time.sleep(0.5)

    def _watch(self) -> None:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
        selector = f"kubernetes.io/service-name={SERVICE}"
        listed = self.api.get_json(path, query={"labelSelector": selector})
        slices = {s["metadata"]["name"]: s for s in listed["items"]}
        rv = listed["metadata"]["resourceVersion"]
        while True:
            query = {"watch": "true", "labelSelector": selector, "resourceVersion": rv, "timeoutSeconds": 600}
            for line in iter_resp_lines(self.api.request("GET", path, query=query, timeout=(5, 620))):
                now = time.monotonic()
                event = json.loads(line)
                obj = event["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if event["type"] == "DELETED":
                    slices.pop(obj["metadata"]["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    slices[obj["metadata"]["name"]] = obj
                else:
                    continue
                self.events.append((now, refspeaker.ready_on(slices, self.node)))


# ---- one path's flips


@dataclass
class Transition:
    path: str
    op: str  # add | del
    t0: float
    route: float
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return (self.route - self.t0) * 1000


def _first(events: list[tuple[float, Any]], start: float, end: float, want: Any) -> float | None:
    return next((t for t, v in events if start <= t <= end and v == want), None)


@dataclass
class Observers:
    lab: Lab
    slices: SliceWatch
    addresses: AddressEvents
    node_wire: Wire
    router_wire: Wire
    debug: bool

    def mark(self, transitions: list[Transition], ref_log: list[tuple[float, str]] | None = None) -> None:
        """Fills each transition's marks from the observers and the FRR logs, within its own window."""
        node_log = frr_log(self.lab.node("node1").frr.dir / "frr.log") if self.debug else []
        router_log = frr_log(self.lab.router_frr.dir / "frr.log") if self.debug else []
        addresses = [(t, (k, a)) for t, k, a in self.addresses.events]
        for tr in transitions:
            start, end = tr.t0, tr.route + 0.002
            found: dict[str, float | None] = {
                "UPDATE on node wire": _first(self.node_wire.events, start, end, tr.op),
                "UPDATE at R's wire": _first(self.router_wire.events, start, end, tr.op),
                "R kernel route": tr.route,
            }
            markers = list(ROUTER_MARKERS[tr.op])
            if tr.path.startswith("floor"):  # the time starts at the netlink request
                found["address on lo"] = _first(addresses, start, end, (tr.op, VIP)) or tr.t0
            else:
                found["PATCH"] = tr.t0
                found["EndpointSlice"] = _first(self.slices.events, start, end, tr.op == "add")
            if tr.path.startswith("l3lb"):
                found["address on lo"] = _first(addresses, start, end, (tr.op, VIP))
            if ref_log is not None:
                found["speaker told"] = _first(ref_log, start, end, f"sent {tr.op} {PREFIX}")
            else:
                markers += NODE_MARKERS[tr.op]
            for name, match in markers:
                log = router_log if name.startswith("R ") else node_log
                found[name] = next((t for t, d, msg in log if start <= t <= end and match(d, msg)), None)
            tr.marks = {k: v for k, v in found.items() if v is not None}


class Bench:
    def __init__(self, lab: Lab, obs: Observers, speaker: Path, flips_gap: float) -> None:
        self.lab = lab
        self.obs = obs
        self.speaker = speaker
        self.gap = flips_gap
        self.by_hand = InNetns(lab.node("node1").ns)
        self.transitions: list[Transition] = []
        self.ref_ok: list[tuple[str, float]] = []  # (add|del, ms GoBGP's AddPath/DeletePath took)

    def flip(self, path: str, n: int, action: Callable[[bool], None]) -> list[Transition]:
        out = []
        for _ in range(n):
            for up in (True, False):
                time.sleep(self.gap + random.uniform(0, 0.1))
                t0 = time.monotonic()
                action(up)
                route = self.lab.routes.wait_for(VIP, {"node1"} if up else set(), t0, timeout=10)
                out.append(Transition(path, "add" if up else "del", t0, route))
        return out

    def node_frr(self, settings: dict[str, int]) -> None:
        for node in self.lab.nodes:
            node.frr.vtysh(
                "configure terminal",
                f"zebra work-queue {settings['work-queue']}",
                f"router bgp {node.asn}",
                f"coalesce-time {settings['coalesce-time']}",
            )

    def router_work_queue(self, hold: int) -> None:
        self.lab.router_frr.vtysh("configure terminal", f"zebra work-queue {hold}")

    def floor(self, path: str, n: int) -> None:
        trs = self.flip(path, n, lambda up: self.by_hand.addr("add" if up else "del"))
        self.obs.mark(trs)
        self.transitions += trs

    def l3lb(self, path: str, n: int) -> None:
        self.lab.start_agents()
        for node in self.lab.nodes:
            _wait(lambda node=node: "initial sync done" in node.agent_log(), 20, f"{node.name}'s agent")
        try:
            trs = self.flip(path, n, lambda up: self.lab.set_ready("node1", up))
        finally:
            for node in self.lab.nodes:
                self.lab.signal_agent(node.name, signal.SIGTERM)
            _clear_agent_logs(self.lab)  # the next start appends to the same logs
        self.obs.mark(trs)
        self.transitions += trs

    def direct(self, path: str, n: int) -> None:
        node = self.lab.node("node1")
        argv = [
            sys.executable,
            str(REPO / "tests" / "support" / "refspeaker.py"),
            "--kubeconfig",
            str(self.lab.kubeconfig),
            "--namespace",
            NAMESPACE,
            "--service",
            SERVICE,
            "--node",
            "node1",
            "--prefix",
            PREFIX,
            "--speaker",
            str(self.speaker),
            "--",
            "--local",
            REF_LOCAL,
            "--peer",
            REF_ROUTER,
            "--asn",
            str(node.asn),
        ]
        assert node.ns.logdir is not None
        log = node.ns.logdir / f"{node.ns.name}-refspeaker.log"
        log.unlink(missing_ok=True)
        proc = node.ns.popen(argv, "refspeaker")
        try:
            _wait(lambda: _router_peer_state(self.lab) == "Established", 30, "the speaker's BGP session")
            _wait(lambda: "slice notready" in log.read_text(), 10, "the speaker's controller")
            time.sleep(0.5)
            trs = self.flip(path, n, lambda up: self.lab.set_ready("node1", up))
        finally:
            node.ns.stop(proc)
        ref_log = []
        for line in log.read_text().splitlines():
            t, _, rest = line.partition(" ")
            try:
                ref_log.append((float(t), rest))
            except ValueError:
                continue
            if rest.startswith("ok "):
                op, _, ns = rest.split()[1:4]
                self.ref_ok.append((op, int(ns) / 1e6))
        self.obs.mark(trs, ref_log)
        self.transitions += trs


def _clear_agent_logs(lab: Lab) -> None:
    for node in lab.nodes:
        assert node.ns.logdir is not None
        (node.ns.logdir / f"{node.ns.name}-agent.log").write_text("")


def _router_peer_state(lab: Lab) -> str:
    try:
        peers = lab.router_frr.vtysh_json("show bgp ipv4 unicast summary json").get("peers", {})
    except (subprocess.CalledProcessError, json.JSONDecodeError):
        return ""
    return peers.get(REF_LOCAL, {}).get("state", "")


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# ---- set-up


def prepare(lab: Lab, debug: bool) -> None:
    """The reference's numbered link and R's neighbor for it; FRR's debug logs; the Service and pod."""
    node = lab.node("node1")
    ip("-n", node.ns.name, "addr", "add", f"{REF_LOCAL}/30", "dev", "eth-r")
    ip("-n", lab.router.name, "addr", "add", f"{REF_ROUTER}/30", "dev", node.uplink)
    lab.router_frr.vtysh(
        "configure terminal",
        "router bgp 65000",
        f"neighbor {REF_LOCAL} peer-group NODES",
        f"neighbor {REF_LOCAL} passive",
        f"neighbor {REF_LOCAL} timers 3 9",
    )
    if debug:
        for frr in (node.frr, lab.router_frr):
            frr.vtysh(
                "configure terminal",
                "log timestamp precision 6",
                f"log file {frr.dir / 'frr.log'} debugging",
                *FRR_DEBUG,
            )
    lab.create_service(SERVICE, ip=VIP)  # IPv4 only: the reference speaks IPv4 only
    lab.set_ready("node1", False)


def frr_version() -> str:
    out = subprocess.run(["/usr/lib/frr/bgpd", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].split()[-1] if out else "?"


# ---- report


def summarize(transitions: list[Transition], paths: list[str]) -> dict:
    out: dict = {}
    for path in paths:
        row: dict = {}
        for op in ("del", "add"):
            trs = [t for t in transitions if t.path == path and t.op == op]
            if not trs:
                continue
            ms = [t.ms for t in trs]
            hops = {}
            for a, b, what in HOPS + SPANS:
                d = [(t.marks[b] - t.marks[a]) * 1000 for t in trs if a in t.marks and b in t.marks]
                if len(d) >= max(1, len(trs) // 2):
                    hops[what] = {"p50": round(statistics.median(d), 2), "n": len(d)}
            row[op] = {
                "n": len(ms),
                "p50": round(pct(ms, 50), 1),
                "p99": round(pct(ms, 99), 1),
                "hops_ms": hops,
            }
        out[path] = row
    return out


def print_report(summary: dict, names: dict[str, str], ref_ok: list[tuple[str, float]]) -> None:
    """The table (each path next to the direct speaker under the same router settings), then the hops."""
    print(
        f"\n{'path to the router':58s}{'withdraw p50 / p99':>22s}{'announce p50 / p99':>22s}"
        f"{'over direct p50':>18s}"
    )
    for path, row in summary.items():
        cells = [
            f"{row[op]['p50']:.1f} / {row[op]['p99']:.1f} ms" if op in row else "-" for op in ("del", "add")
        ]
        ref = summary.get("direct-rtuned" if path.endswith("rtuned") else "direct", {})
        vs = ""
        if ref and path.startswith("l3lb") and "add" in row and "add" in ref:  # floors start at netlink
            vs = (
                f"{row['del']['p50'] - ref['del']['p50']:+.1f} / {row['add']['p50'] - ref['add']['p50']:+.1f}"
            )
        print(f"{names[path]:58s}{cells[0]:>22s}{cells[1]:>22s}{vs:>18s}")
    if ref_ok:
        for op in ("add", "del"):
            d = [ms for o, ms in ref_ok if o == op]
            if d:
                print(
                    f"  GoBGP's own {'AddPath' if op == 'add' else 'DeletePath'} call: "
                    f"p50 {statistics.median(d):.2f} ms"
                )
    hop_names = [what for _, _, what in HOPS + SPANS]
    for path, row in summary.items():
        print(f"\nper hop, medians (ms): {names[path]}")
        print(f"  {'hop':66s}{'withdraw':>10s}{'announce':>10s}")
        for what in hop_names:
            cells = [row.get(op, {}).get("hops_ms", {}).get(what, {}).get("p50") for op in ("del", "add")]
            if any(c is not None for c in cells):
                txt = [f"{c:.2f}" if c is not None else "-" for c in cells]
                print(f"  {what:66s}{txt[0]:>10s}{txt[1]:>10s}")


def print_knobs() -> None:
    print("\nwhat sets the hops that take time:")
    for hop, what in WHAT_SETS_IT.items():
        print(f"  {hop}: {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flips", type=int, default=40, help="announces (and as many withdraws) per path")
    ap.add_argument("--rounds", type=int, default=2, help="the paths take turns this many times")
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between transitions (plus 0-0.1 s)")
    ap.add_argument("--router-tuned", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--frr-debug", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--minutes", type=float, default=20, help="wall-clock limit of the whole run")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "peers.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/peers.py needs root (network namespaces, FRR)", file=sys.stderr)
        return 2

    def over_time(signum: int, frame: object) -> None:
        raise TimeoutError(f"bench/peers.py: over its {args.minutes} min limit")

    signal.signal(signal.SIGALRM, over_time)
    signal.alarm(int(args.minutes * 60))
    t_start = time.monotonic()
    speaker = refspeaker.build(cache_dir())
    v = versions()
    info = {
        "frr": frr_version(),
        "gobgp": refspeaker.gobgp_version(),
        "kubernetes": v["KUBE_VERSION"],
        "etcd": v["ETCD_VERSION"],
        "load_before": os.getloadavg(),
        "node_frr_lab": LAB,
        "node_frr_recommended": RECOMMENDED,
    }
    print(
        f"FRR {info['frr']} on the nodes and R, GoBGP {info['gobgp']} (bench/refspeaker), kube-apiserver "
        f"{info['kubernetes']}, etcd {info['etcd']}; load average {info['load_before'][0]:.2f}"
    )
    names = {
        "l3lb-lab": f"l3lb, node FRR as in the lab (work-queue {LAB['work-queue']}, coalesce 100)",
        "l3lb-rec": "l3lb, node FRR recommended (zebra work-queue 0, coalesce 0)",
        "floor-lab": "FRR floor, lab settings (/32 on lo by hand)",
        "floor-rec": "FRR floor, recommended settings (/32 on lo by hand)",
        "direct": f"direct BGP speaker (GoBGP {info['gobgp']}) peering R",
        "l3lb-rec-rtuned": "l3lb recommended, R with zebra work-queue 0",
        "direct-rtuned": "direct speaker, R with zebra work-queue 0",
    }
    paths = ["l3lb-lab", "l3lb-rec", "floor-lab", "floor-rec", "direct"]
    if args.router_tuned:
        paths += ["l3lb-rec-rtuned", "direct-rtuned"]
    per_round = [
        args.flips // args.rounds + (1 if r < args.flips % args.rounds else 0) for r in range(args.rounds)
    ]
    with Lab(2, agents=False, log=print) as lab:
        prepare(lab, args.frr_debug)
        node1 = lab.node("node1")
        obs = Observers(
            lab,
            SliceWatch(str(lab.cp.admin_kubeconfig), "node1"),  # type: ignore[union-attr]
            AddressEvents(node1.ns),
            Wire(node1.ns, "eth-r"),
            Wire(lab.router, node1.uplink),
            args.frr_debug,
        )
        bench = Bench(lab, obs, speaker, args.gap)
        for r, n in enumerate(per_round, 1):
            print(f"round {r}/{args.rounds}: {n} announces and {n} withdraws per path")
            for path in paths:
                t = time.monotonic()
                bench.node_frr(RECOMMENDED if "rec" in path else LAB)
                bench.router_work_queue(0 if path.endswith("rtuned") else 10)
                if path.startswith("floor"):
                    bench.floor(path, n)
                elif path.startswith("l3lb"):
                    bench.l3lb(path, n)
                else:
                    bench.direct(path, n)
                done = [tr.ms for tr in bench.transitions if tr.path == path]
                print(
                    f"  {names[path]}: p50 so far {statistics.median(done):.1f} ms "
                    f"({time.monotonic() - t:.0f} s)"
                )
    signal.alarm(0)
    summary = summarize(bench.transitions, paths)
    print_report(summary, names, bench.ref_ok)
    print_knobs()
    info["load_after"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - t_start)
    print(
        f"\nload average {info['load_before'][0]:.2f} before, {info['load_after'][0]:.2f} after; "
        f"{info['seconds']} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "info": info,
                "names": names,
                "flips": args.flips,
                "rounds": args.rounds,
                "frr_debug": args.frr_debug,
                "summary": summary,
                "gobgp_call_ms": bench.ref_ok,
                "transitions": [
                    {
                        "path": t.path,
                        "op": t.op,
                        "ms": round(t.ms, 3),
                        "marks": {k: round((v - t.t0) * 1000, 3) for k, v in t.marks.items()},
                    }
                    for t in bench.transitions
                ],
            },
            indent=1,
        )
    )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
