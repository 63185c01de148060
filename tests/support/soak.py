"""A seeded chaos soak of the whole path: the FRR lab (real control plane, nodes with FRR and agents, a
router, a client) under a random schedule of faults, reproducible from its seed, with invariants checked
from outside the agents:

- I1: no address outside the prefix, or not host-length, is ever changed except by the soak itself
  (netlink events of every node, followed as they happen);
- I2: after each fault, within a bound stated per fault kind, each node's lo (and its class and drain
  interfaces) and the router's next hops equal what the API says (an oracle written here, independent of
  l3lb's own decision code: a node announces unless its agent is down, it is excluded by label, tainted
  ToBeDeletedByClusterAutoscaler, being deleted or annotated l3lb.io/drain; cordons and Ready are no
  reason), and the client reaches every announced Service on a node that should announce it;
- I3: no IP is ever on two Services except by the sharing rules, and a live Service's IP never moves unless
  the soak changed its request, type or class (the API, polled twice a second);
- I4: no agent exits unless the soak stopped it, and /healthz never fails (no fault here lasts long enough
  that it should).

The agents run weighted anycast with two classes, so a Local Service's IP sits on ``l3lbw1`` and the soak
can delete that interface under them (``class-interface-delete``); ``monitor-lost`` shrinks an agent's
netlink monitor buffer from outside (its socket, taken with pidfd_getfd) and floods it with address
changes until the kernel drops notifications, and removes one of the agent's addresses in that flood.

The agents drain for DRAIN seconds: ``drain`` and ``undrain`` annotate a node and take the annotation away,
and a SIGTERM drains before the agent exits; a draining address sits on ``l3lbdrain`` until then, which
convergence waits out. A cordon changes nothing any more.

Faults are injected one at a time, each followed by its convergence; many leave state behind (agents down,
nodes cordoned or drained, the apiserver down, addresses added by hand), so they mix. ``bench/soak.py`` runs
it for minutes; ``tests/lab/test_soak.py`` for a minute in ``make test``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubelet import (
    cordon,
    create_lb_service,
    create_pod,
    delete_pod_now,
    lease_holder,
    set_node_annotation,
    set_node_label,
    set_pod_ready,
)
from kubernetes import client
from lab import HTTP_PORT, NAMESPACE, PREFIX, PY, Lab, ip_json
from netns import NetlinkWatch

NET = ipaddress.ip_network(PREFIX)
SEEDS = pytest.StashKey[list[str]]()
"""The soaks' tables (with their seeds) of a pytest session, printed at its end by tests/conftest.py."""
OTHER_CLASS = "example.com/other"
EXCLUDE = "node.kubernetes.io/exclude-from-external-load-balancers"
DRAIN_ANNOTATION = "l3lb.io/drain"
DRAIN = 2
"""The agents' --drain-seconds."""
SHARE = "l3lb.io/allow-shared-ip"
REQUEST = "l3lb.io/load-balancer-ips"
MAX_SERVICES = 6
REACT = 25.0
"""Seconds the allocator has to resolve a conflict the soak's own change made (a new leader may be due)."""
OUTSIDE = ("10.250.0.1/32", "10.0.100.192/26", "fd00:beef::1/128")  # hand-made: the agents must not touch
CLASSES = 2
"""Weight classes of the agents: a Local Service's IP (one ready pod per node here) sits on l3lbw1."""
FLOOD = 300
"""Addresses added and removed by hand, outside the prefix, to overflow a shrunken monitor buffer."""
PIDFD_GETFD = 438  # the system call's number on x86_64 and aarch64 alike
CLIENT_GET = """
import json, socket, sys
out = {}
for ip in sys.argv[2:]:
    try:
        s = socket.create_connection((ip, int(sys.argv[1])), timeout=2)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out[ip] = data.split(b"\\r\\n\\r\\n", 1)[1].decode()
    except OSError as e:
        out[ip] = "error: " + type(e).__name__
print(json.dumps(out))
"""


def bound(kind: str, lifetime: int) -> float:
    """Seconds within which the world must converge after a fault of ``kind``."""
    if kind in ("agent-kill", "leader-kill"):
        return lifetime + 10  # the addresses expire with their lifetime
    if kind in ("apiserver-start", "etcd-start", "frr-restart"):
        return 30  # watches back off up to 10 s; a BGP session comes back
    if kind.startswith("svc-"):
        return 25  # may wait for a new leader (the Lease of a killed one expires after 15 s)
    return 12


@dataclass
class Report:
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    convergence: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Per fault kind, the time to converge of each fault that changed what is announced where (for a
    while, as a repair, or for good)."""
    unchanged: Counter[str] = field(default_factory=Counter)
    """Faults that changed nothing anyone could see: converged at the first look, as before."""
    log: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "checks": dict(self.checks),
            "violations": self.violations,
            "unchanged": dict(self.unchanged),
            "convergence_s": {
                k: {
                    "n": len(v),
                    "p50": round(statistics.median(v), 3),
                    "p99": round(_pct(v, 99), 3),
                    "max": round(max(v), 3),
                }
                for k, v in sorted(self.convergence.items())
            },
        }

    def table(self) -> str:
        j = self.as_json()
        lines = [
            f"seed {self.seed}: {j['faults_total']} faults, {sum(self.checks.values())} checks, "
            f"{len(self.violations)} violations",
            "time to converge of the faults that changed what is announced where:",
            f"{'fault':<22} {'faults':>6} {'changed':>7} {'p50 s':>7} {'p99 s':>7} {'max s':>7}",
        ]
        conv = j["convergence_s"]
        for kind in sorted(self.faults):
            c = conv.get(kind)
            figures = (
                f"{c['p50']:>7.2f} {c['p99']:>7.2f} {c['max']:>7.2f}" if c else f"{'-':>7} {'-':>7} {'-':>7}"
            )
            lines.append(f"{kind:<22} {self.faults[kind]:>6} {c['n'] if c else 0:>7} {figures}")
        lines.append("checks: " + ", ".join(f"{k} {v}" for k, v in sorted(self.checks.items())))
        return "\n".join(lines)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class AddressLog(NetlinkWatch):
    """Every address added or removed in a namespace: (time, "add"|"del", interface index, ip, prefixlen)."""

    def __init__(self, ns) -> None:  # type: ignore[no-untyped-def]
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

        self.groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        self.events: list[tuple[float, str, int, str, int]] = []
        super().__init__(ns)

    def handle(self, msg: dict, now: float, query: object) -> None:
        ip = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        kind = {"RTM_NEWADDR": "add", "RTM_DELADDR": "del"}.get(msg.get("event"))
        if ip and kind:
            self.events.append((now, kind, msg["index"], str(ipaddress.ip_address(ip)), msg["prefixlen"]))


class Soak:
    def __init__(self, lab: Lab, seed: int, log: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.say = log
        self.core: client.CoreV1Api = lab.core
        self.disc = client.DiscoveryV1Api(lab.core.api_client)
        self.t0 = time.monotonic()
        self.api_up = True
        self.etcd_up = True
        self.agent_down: dict[str, str] = {}  # node -> "killed" | "stopped", as the soak left it
        self.services: set[str] = set()
        self.pods: dict[tuple[str, str], bool] = {}
        self.own: list[tuple[float, str, str, int]] = []  # the soak's own address changes: (t, node, ip, len)
        self.outside: set[tuple[str, str]] = set()  # (node, cidr) added by hand and still there
        self.sanctioned: dict[str, float] = {}  # Service -> when the soak last changed its request/type/class
        self.ips: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # Service -> (uid, resourceVersion, IPs)
        self._stop = threading.Event()
        self.watchers = {n.name: AddressLog(n.ns) for n in lab.nodes}
        self.held: dict[str, set[str]] = {}
        self._conflicts: dict[str, float] = {}  # IP -> when two Services were first seen on it
        self.started_at = {n.name: time.monotonic() for n in lab.nodes}
        self._names = (f"s{i}" for i in range(10_000))
        self.drained: set[str] = set()
        """Nodes the soak annotated l3lb.io/drain=true."""
        self.disturbed: str | None = None
        """The node whose own addresses the last fault removed (class interface, monitor flood): the time
        to converge counts even if the agent had repaired it by the first look, and includes its
        /healthz being back to 200 (a flooded monitor is down for a moment, and says so)."""

    # ---- the run
    def run(self, duration: float) -> Report:
        monitors = [threading.Thread(target=self._monitor_api, daemon=True)]
        for t in monitors:
            t.start()
        try:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                self.step()
            self.heal()
        finally:
            self._stop.set()
            for t in monitors:
                t.join(5)
        self._check_addresses_untouched()
        return self.report

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f} {text}"
        self.report.log.append(line)
        self.say(line)

    def violation(self, text: str) -> None:
        self.note(f"VIOLATION {text}")
        self.report.violations.append(f"{time.monotonic() - self.t0:.2f}s {text}")

    def step(self) -> None:
        kind, action = self.choose()
        self.note(f"fault {kind}")
        self.report.faults[kind] += 1
        before = (self._actual(), self._router()) if self.api_up and self.etcd_up else None
        self.disturbed = None
        detail = action()
        if detail:
            self.note(f"  {detail}")
        if not self.api_up or not self.etcd_up:
            self.hold(kind)
            return
        self.converge(kind, before)

    def heal(self) -> None:
        """Undoes what is still broken so the final check sees a healthy cluster."""
        if not self.etcd_up:
            self.do_etcd_start()
            self.converge("etcd-start")
        if not self.api_up:
            self.do_apiserver_start()
            self.converge("apiserver-start")
        for node in list(self.agent_down):
            self.do_agent_start(node)
            self.converge("agent-start")

    # ---- choosing a fault
    def choose(self) -> tuple[str, Callable[[], str]]:
        if not self.etcd_up:
            return "etcd-start", self.do_etcd_start
        if not self.api_up:
            return "apiserver-start", self.do_apiserver_start
        running = [n.name for n in self.lab.nodes if n.name not in self.agent_down]
        options: list[tuple[str, float, Callable[[], str]]] = [
            ("pod-ready", 6, self.do_pod_ready),
            ("pod-delete", 1.5, self.do_pod_delete),
            ("cordon", 1, self.do_cordon),
            ("exclude", 1, self.do_exclude),
            ("drain", 0.8, self.do_drain),
            ("frr-restart", 0.5, self.do_frr_restart),
        ]
        if len(self.services) < MAX_SERVICES:
            options.append(("svc-create", 3, self.do_svc_create))
        if self.services:
            options += [
                ("svc-delete", 1, self.do_svc_delete),
                ("svc-retype", 1, self.do_svc_retype),
                ("svc-reclass", 1, self.do_svc_reclass),
                ("svc-request", 1, self.do_svc_request),
                ("svc-share", 0.7, self.do_svc_share),
            ]
        if len(running) > 1:
            options += [
                ("agent-kill", 0.7, self.do_agent_kill),
                ("agent-term", 0.7, self.do_agent_term),
                ("leader-kill", 0.5, self.do_leader_kill),
            ]
        if self.agent_down:
            options.append(("agent-start", 2, self.do_agent_start))
        if self.drained:
            options.append(("undrain", 1.5, self.do_undrain))
        if running:
            options += [
                ("hand-add-inside", 0.7, self.do_hand_add_inside),
                ("hand-del", 0.7, self.do_hand_del),
                ("hand-outside", 0.5, self.do_hand_outside),
                ("class-interface-delete", 0.6, self.do_class_interface_delete),
                ("monitor-lost", 0.6, self.do_monitor_lost),
            ]
        if not self.agent_down:
            options += [
                ("apiserver-stop", 0.4, self.do_apiserver_stop),
                ("etcd-stop", 0.2, self.do_etcd_stop),
            ]
        kinds, weights, actions = zip(*options, strict=True)
        i = self.rng.choices(range(len(options)), weights=weights)[0]
        return kinds[i], actions[i]

    def _node(self, among: list[str] | None = None) -> str:
        return self.rng.choice(sorted(among if among is not None else [n.name for n in self.lab.nodes]))

    # ---- faults
    def do_pod_ready(self) -> str:
        if not self.services:
            self.do_svc_create()
        svc, node = self.rng.choice(sorted(self.services)), self._node()
        key = (svc, node)
        ready = self.rng.random() < 0.7 if key not in self.pods else not self.pods[key]
        pod = f"{svc}-{node}"
        if key in self.pods:
            set_pod_ready(self.core, NAMESPACE, pod, ready)
        else:
            index = self.lab.node(node).index
            create_pod(
                self.core,
                NAMESPACE,
                pod,
                node,
                f"10.244.{index}.{len(self.pods) % 250 + 1}",
                labels={"app": svc},
                ready=ready,
                port=HTTP_PORT,
            )
        self.pods[key] = ready
        return f"pod {pod} ready={ready}"

    def do_pod_delete(self) -> str:
        if not self.pods:
            return self.do_pod_ready()
        key = self.rng.choice(sorted(self.pods))
        delete_pod_now(self.core, NAMESPACE, f"{key[0]}-{key[1]}")
        del self.pods[key]
        return f"pod {key[0]}-{key[1]} deleted"

    def do_svc_create(self) -> str:
        name = next(self._names)
        policy = self.rng.choice(["Local", "Cluster"])
        cls = OTHER_CLASS if self.rng.random() < 0.15 else None
        ips = str(NET[self.rng.randrange(10, 60)]) if self.rng.random() < 0.3 else None
        create_lb_service(
            self.core,
            NAMESPACE,
            name,
            selector={"app": name},
            policy=policy,
            lb_class=cls,
            ips=ips,
            port=HTTP_PORT,
            target_port=HTTP_PORT,
        )
        self.services.add(name)
        return f"Service {name} {policy} class={cls} request={ips}"

    def do_svc_delete(self) -> str:
        name = self.rng.choice(sorted(self.services))
        self.core.delete_namespaced_service(name, NAMESPACE)
        self.services.discard(name)
        for key in [k for k in self.pods if k[0] == name]:
            delete_pod_now(self.core, NAMESPACE, f"{key[0]}-{key[1]}")
            del self.pods[key]
        return f"Service {name} deleted"

    def _sanction(self, name: str) -> None:
        self.sanctioned[name] = time.monotonic()

    def do_svc_retype(self) -> str:
        name = self.rng.choice(sorted(self.services))
        svc = self.core.read_namespaced_service(name, NAMESPACE)
        self._sanction(name)
        if svc.spec.type == "LoadBalancer":
            patch: dict[str, Any] = {
                "spec": {
                    "type": "ClusterIP",
                    "externalTrafficPolicy": None,
                    "allocateLoadBalancerNodePorts": None,
                    "loadBalancerClass": None,
                }
            }
            self.core.patch_namespaced_service(name, NAMESPACE, patch)
            return f"Service {name} -> ClusterIP"
        self.core.patch_namespaced_service(
            name, NAMESPACE, {"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster"}}
        )
        return f"Service {name} -> LoadBalancer"

    def do_svc_reclass(self) -> str:
        """The class is immutable on a LoadBalancer: through ClusterIP and back, with the other class."""
        name = self.rng.choice(sorted(self.services))
        svc = self.core.read_namespaced_service(name, NAMESPACE)
        cls = None if svc.spec.load_balancer_class == OTHER_CLASS else OTHER_CLASS
        self._sanction(name)
        if svc.spec.type == "LoadBalancer":
            self.core.patch_namespaced_service(
                name,
                NAMESPACE,
                {
                    "spec": {
                        "type": "ClusterIP",
                        "externalTrafficPolicy": None,
                        "allocateLoadBalancerNodePorts": None,
                        "loadBalancerClass": None,
                    }
                },
            )
        self.core.patch_namespaced_service(
            name,
            NAMESPACE,
            {"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "loadBalancerClass": cls}},
        )
        return f"Service {name} class -> {cls}"

    def do_svc_request(self) -> str:
        name = self.rng.choice(sorted(self.services))
        ips = str(NET[self.rng.randrange(10, 60)]) if self.rng.random() < 0.7 else None
        self._sanction(name)
        self.core.patch_namespaced_service(name, NAMESPACE, {"metadata": {"annotations": {REQUEST: ips}}})
        return f"Service {name} request -> {ips}"

    def do_svc_share(self) -> str:
        """Two Services ask for one IP with the same sharing key: both Cluster, ports apart."""
        if len(self.services) < 2:
            return self.do_svc_create()
        a, b = self.rng.sample(sorted(self.services), 2)
        ip = str(NET[self.rng.randrange(60, 90)])
        for name, port in ((a, HTTP_PORT), (b, HTTP_PORT + 1)):
            self._sanction(name)
            svc = self.core.read_namespaced_service(name, NAMESPACE)
            svc.metadata.annotations = {**(svc.metadata.annotations or {}), REQUEST: ip, SHARE: "soak"}
            svc.spec.ports = [
                client.V1ServicePort(name="http", port=port, target_port=HTTP_PORT, protocol="TCP")
            ]
            if svc.spec.type == "LoadBalancer":
                svc.spec.external_traffic_policy = "Cluster"
            self.core.replace_namespaced_service(name, NAMESPACE, svc)
        return f"Services {a} and {b} share {ip}"

    def _agent_signal(self, node: str, sig: signal.Signals, state: str) -> str:
        n = self.lab.node(node)
        assert n.agent is not None
        self.agent_down[node] = state
        n.agent.send_signal(sig)
        code = n.agent.wait(20)
        n.ns.procs.remove(n.agent)
        return f"agent on {node} {state} (exit {code})"

    def do_agent_kill(self) -> str:
        return self._agent_signal(self._node(self._running()), signal.SIGKILL, "killed")

    def do_agent_term(self) -> str:
        # Not in the first second of a start: before Python has run a line of l3lb, SIGTERM just ends it.
        settled = [n for n in self._running() if time.monotonic() - self.started_at[n] > 1.5]
        if not settled:
            return self.do_agent_kill()
        node = self._node(settled)
        out = self._agent_signal(node, signal.SIGTERM, "stopped")
        if not out.endswith("(exit 0)"):
            self.violation(f"SIGTERM of the agent on {node}: {out}")
        return out

    def do_leader_kill(self) -> str:
        leader = lease_holder(self.core, NAMESPACE)
        if leader not in self._running():
            return self.do_agent_kill()
        return "leader " + self._agent_signal(leader, signal.SIGKILL, "killed")

    def do_agent_start(self, node: str | None = None) -> str:
        node = node or self._node(list(self.agent_down))
        self.lab.node(node).start_agent()
        self.started_at[node] = time.monotonic()
        del self.agent_down[node]
        return f"agent on {node} started"

    def _running(self) -> list[str]:
        return [n.name for n in self.lab.nodes if n.name not in self.agent_down]

    def _hand(self, node: str, op: str, cidr: str, dev: str = "lo") -> None:
        net = ipaddress.ip_interface(cidr)
        self.own.append((time.monotonic(), node, str(net.ip), net.network.prefixlen))
        self.lab.node(node).ns.run(["ip", "addr", op, cidr, "dev", dev], check=False)

    def do_hand_add_inside(self) -> str:
        node = self._node(self._running())
        ip = str(NET[self.rng.randrange(200, 250)])
        self._hand(node, "add", f"{ip}/32")
        return f"{ip}/32 added by hand on {node}"

    def do_hand_del(self) -> str:
        node = self._node(self._running())
        held = self._ours(node)
        if not held:
            return self.do_hand_add_inside()
        ip = self.rng.choice(sorted(held))
        self._hand(node, "del", f"{ip}/32", held[ip])
        return f"{ip}/32 deleted by hand from {held[ip]} on {node}"

    def do_class_interface_delete(self) -> str:
        """Deletes a weight-class interface (its addresses go with it): the agent makes it again. A node
        whose class interfaces hold addresses (a Local Service's, with a ready pod there) is chosen first."""
        running = self._running()
        holding = [n for n in running if set(self._ours(n).values()) - {"lo", "l3lbdrain"}]
        node = self._node(holding or running)
        used = sorted(set(self._ours(node).values()) - {"lo", "l3lbdrain"})
        dev = used[0] if used else f"l3lbw{self.rng.randrange(1, CLASSES + 1)}"
        held = sum(d == dev for d in self._ours(node).values())
        self.lab.node(node).ns.run(["ip", "link", "del", dev], check=False)
        self.disturbed = node if held else None
        return f"{dev} deleted on {node} (it held {held})"

    def do_monitor_lost(self) -> str:
        """The agent's netlink monitor loses notifications: its buffer shrunk from outside, then a flood of
        address changes (outside the prefix) and, in it, one of the agent's addresses removed by hand."""
        node = self._node(self._running())
        n = self.lab.node(node)
        assert n.agent is not None
        try:
            shrink_monitor_buffer(n.agent.pid)
        except OSError as err:
            return f"no monitor to shrink on {node}: {err}"
        lines = []
        for op in ("add", "del"):
            for i in range(FLOOD):
                cidr = f"10.251.{i // 250}.{i % 250 + 1}/32"
                self.own.append((time.monotonic(), node, cidr.split("/")[0], 32))
                lines.append(f"addr {op} {cidr} dev lo")
        held = self._ours(node)
        victim = self.rng.choice(sorted(held)) if held else None
        if victim is not None:
            lines.insert(FLOOD, f"addr del {victim}/32 dev {held[victim]}")
            self.own.append((time.monotonic(), node, victim, 32))
        self.disturbed = node
        batch = "\n".join(lines) + "\n"
        flood = n.ns.argv(["ip", "-batch", "-"])
        subprocess.run(flood, input=batch, text=True, check=False, capture_output=True)
        removed = f"; {victim} removed in them" if victim else ""
        return f"monitor of {node} flooded with {2 * FLOOD} changes{removed}"

    def do_hand_outside(self) -> str:
        node = self._node()
        cidr = self.rng.choice(OUTSIDE)
        if (node, cidr) in self.outside:
            self._hand(node, "del", cidr)
            self.outside.discard((node, cidr))
            return f"{cidr} removed by hand on {node}"
        self._hand(node, "add", cidr)
        self.outside.add((node, cidr))
        return f"{cidr} added by hand on {node}"

    def do_cordon(self) -> str:
        node = self._node()
        on = not self.core.read_node(node).spec.unschedulable
        cordon(self.core, node, on)
        return f"{node} {'cordoned' if on else 'uncordoned'}"

    def do_drain(self) -> str:
        """kubectl annotate node N l3lb.io/drain=true: its addresses drain from l3lbdrain, then go."""
        node = self._node(sorted({n.name for n in self.lab.nodes} - self.drained) or None)
        set_node_annotation(self.core, node, DRAIN_ANNOTATION, "true")
        self.drained.add(node)
        return f"{node} drained"

    def do_undrain(self) -> str:
        node = self._node(sorted(self.drained))
        set_node_annotation(self.core, node, DRAIN_ANNOTATION, None)
        self.drained.discard(node)
        return f"{node} undrained"

    def do_exclude(self) -> str:
        node = self._node()
        labels = self.core.read_node(node).metadata.labels or {}
        on = EXCLUDE not in labels
        set_node_label(self.core, node, EXCLUDE, "true" if on else None)
        return f"{node} exclude label {'set' if on else 'removed'}"

    def do_frr_restart(self) -> str:
        n = self.lab.node(self._node())
        for proc in list(n.frr.procs):
            n.ns.stop(proc)
        n.frr.procs.clear()
        for stale in ("zserv.api", "zebra.pid", "bgpd.pid"):
            (n.frr.dir / stale).unlink(missing_ok=True)
        n.frr.start((n.frr.dir / "zebra.conf").read_text(), (n.frr.dir / "bgpd.conf").read_text())
        return f"FRR restarted on {n.name}"

    def do_apiserver_stop(self) -> str:
        self.held = self._actual()
        self.lab.cp.stop_apiserver()  # type: ignore[union-attr]
        self.api_up = False
        return "apiserver stopped"

    def do_apiserver_start(self) -> str:
        self.lab.cp.restart_apiserver()  # type: ignore[union-attr]
        self.api_up = True
        return "apiserver started"

    def do_etcd_stop(self) -> str:
        self.held = self._actual()
        self.lab.cp.stop_etcd()  # type: ignore[union-attr]
        self.etcd_up = False
        return "etcd stopped"

    def do_etcd_start(self) -> str:
        self.lab.cp.start_etcd()  # type: ignore[union-attr]
        self.etcd_up = True
        return "etcd started"

    # ---- observing
    def _ours(self, node: str) -> dict[str, str]:
        """Host-length addresses inside the prefix on ``node``'s lo and weight-class interfaces, each with
        its interface."""
        devs = {"lo", "l3lbdrain", *(f"l3lbw{w}" for w in range(1, CLASSES + 1))}
        out = {}
        for link in json.loads(ip_json(self.lab.node(node).ns, "addr", "show") or "[]"):
            if link["ifname"] not in devs:
                continue
            for a in link.get("addr_info", []):
                if a["prefixlen"] == 32 and ipaddress.ip_address(a["local"]) in NET:
                    out[a["local"]] = link["ifname"]
        return out

    def _router(self) -> dict[str, set[str]]:
        """The router's next hops (by node) of every /32 inside the prefix."""
        names = {n.uplink: n.name for n in self.lab.nodes}
        out: dict[str, set[str]] = {}
        for r in json.loads(ip_json(self.lab.router, "route", "show") or "[]"):
            dst = r.get("dst", "")
            if "/" in dst or dst == "default" or ipaddress.ip_address(dst) not in NET:
                continue
            out[dst] = {names.get(h.get("dev", ""), "?") for h in r.get("nexthops") or [r]}
        return out

    def _actual(self) -> dict[str, set[str]]:
        return {n.name: set(self._ours(n.name)) for n in self.lab.nodes}

    def expected(self) -> dict[str, set[str]]:
        """What each node should hold, from the API alone (the oracle)."""
        services = self.core.list_namespaced_service(NAMESPACE).items
        slices = self.disc.list_namespaced_endpoint_slice(NAMESPACE).items
        eligible = set()
        for node in self.core.list_node().items:
            labels = node.metadata.labels or {}
            taints = node.spec.taints or []
            drain = (node.metadata.annotations or {}).get(DRAIN_ANNOTATION)
            if (
                labels.get(EXCLUDE, "false").lower() in ("false", "f", "0")  # Go's ParseBool, as 1.34+
                and not any(t.key == "ToBeDeletedByClusterAutoscaler" for t in taints)
                and node.metadata.deletion_timestamp is None
                and drain not in ("true", "True", "TRUE", "t", "T", "1")
                and node.metadata.name not in self.agent_down
            ):  # neither Ready nor a cordon: Kubernetes' load balancers keep such nodes, and so does l3lb
                eligible.add(node.metadata.name)
        ready_on: dict[str, set[str]] = defaultdict(set)
        for s in slices:
            svc = (s.metadata.labels or {}).get("kubernetes.io/service-name")
            for ep in s.endpoints or []:
                c = ep.conditions
                if c is not None and c.ready is not False and not c.terminating:
                    ready_on[svc].add(ep.node_name)
        out: dict[str, set[str]] = {n.name: set() for n in self.lab.nodes}
        for svc in services:
            if svc.spec.type != "LoadBalancer" or svc.spec.load_balancer_class not in (None, "l3lb.io/l3lb"):
                continue
            ips = [i.ip for i in (svc.status.load_balancer.ingress or []) if i.ip]
            ips = [ip for ip in ips if ipaddress.ip_address(ip) in NET]
            nodes = ready_on[svc.metadata.name]
            holders = nodes if svc.spec.external_traffic_policy == "Local" else eligible if nodes else set()
            for node in holders & eligible:
                out[node].update(ips)
        return out

    def converge(self, kind: str, before: tuple[Any, Any] | None = None) -> None:
        """Waits until lo and the router agree with the API (I2), within the bound of ``kind``; then asks
        the client to reach every announced Service. Records the time it took."""
        start = time.monotonic()
        limit = bound(kind, self.lab.address_lifetime)
        last: tuple[Any, ...] = ()
        polls = 0
        while True:
            polls += 1
            self._check_agents()
            try:
                want = self.expected()
            except Exception as err:  # the API just came back and is not answering yet
                last = ("API", repr(err))
                want = None
            if want is not None:
                have = self._actual()
                router = self._router()
                want_router = defaultdict(set)
                for node, ips in want.items():
                    for ip in ips:
                        want_router[ip].add(node)
                self.report.checks["I2 lo+router"] += 1
                wrong = (
                    self._client_misses(dict(want_router))
                    if have == want and router == dict(want_router)
                    else None
                )
                if wrong:  # the data plane does not serve it yet (or the allocator moved an IP meanwhile)
                    last = ("client", wrong, dict(want_router))
                elif (
                    wrong is not None
                    and self.disturbed
                    and (health := self._healthz(self.disturbed))[0] != 200
                ):
                    last = ("healthz", self.disturbed, health)  # its monitor restarting, say
                elif wrong is not None:
                    took = time.monotonic() - start
                    if before == (have, router) and polls == 1 and self.disturbed is None:
                        self.report.unchanged[kind] += 1
                    else:
                        self.report.convergence[kind].append(took)
                    held = " ".join(
                        f"{n}={','.join(sorted(ip.rsplit('.', 1)[1] for ip in v)) or '-'}"
                        for n, v in have.items()
                    )
                    self.note(f"  converged in {took:.2f} s: {held}")
                    self._check_health()
                    return
                else:
                    last = (want, have, router)
            if time.monotonic() - start > limit:
                self.violation(f"I2: not converged {limit:.0f} s after {kind}: expected/lo/router {last}")
                self.report.convergence[kind].append(time.monotonic() - start)
                return
            time.sleep(0.1)

    def hold(self, kind: str) -> None:
        """With the apiserver or etcd down: the agents keep what they hold, for a while."""
        time.sleep(self.rng.uniform(3, 8))
        self._check_agents()
        self.report.checks["I2 held while the API is down"] += 1
        if self._actual() != self.held:
            self.violation(f"I2: addresses changed while {kind}: {self.held} -> {self._actual()}")
        self.report.unchanged[kind] += 1

    def _client_misses(self, want: dict[str, set[str]]) -> dict[str, str]:
        """Asks the client for every announced IP; what it got where it is not served by a node that
        should announce it ({} when all is well)."""
        if not want:
            return {}
        self.report.checks["I2 client"] += 1
        out = self.lab.client.run([PY, "-c", CLIENT_GET, str(HTTP_PORT), *sorted(want)], timeout=60).stdout
        return {ip: got for ip, got in json.loads(out).items() if got not in want[ip]}

    def _check_agents(self) -> None:
        """I4: an agent the soak did not stop is running."""
        for n in self.lab.nodes:
            if n.name in self.agent_down or n.agent is None:
                continue
            code = n.agent.poll()
            self.report.checks["I4 agents alive"] += 1
            if code is not None:
                self.violation(
                    f"I4: the agent on {n.name} exited by itself (code {code}):\n{n.agent_log()[-2000:]}"
                )
                self.agent_down[n.name] = "crashed"

    def _healthz(self, node: str) -> tuple[int, str]:
        return self.lab.http_get(node, "http://127.0.0.1:9655/healthz")

    def _check_health(self) -> None:
        for node in self._running():
            self.report.checks["I4 healthz"] += 1
            status, body = self._healthz(node)
            if status != 200 and time.monotonic() - self.started_at[node] > 2:
                self.violation(f"I4: /healthz of {node} says {status} {body.strip()}")

    def _monitor_api(self) -> None:
        """I3, twice a second while the API answers."""
        while not self._stop.wait(0.5):
            if not (self.api_up and self.etcd_up):
                continue
            try:
                services = self.core.list_namespaced_service(NAMESPACE).items
            except Exception:
                continue
            self.report.checks["I3 one Service per IP"] += 1
            holders: dict[str, list[Any]] = defaultdict(list)
            for svc in services:
                ips = tuple(i.ip for i in (svc.status.load_balancer.ingress or []) if i.ip)
                for ip in ips:
                    holders[ip].append(svc)
                name = svc.metadata.name
                before = self.ips.get(name)
                if (
                    before is not None
                    and before[0] == svc.metadata.uid
                    and before[2]
                    and ips
                    and ips != before[2]
                    and self.sanctioned.get(name, 0) < time.monotonic() - 30
                ):
                    self.violation(f"I3: the IP of {name} moved from {before[2]} to {ips}")
                if ips or before is None or before[0] != svc.metadata.uid:
                    self.ips[name] = (svc.metadata.uid, svc.metadata.resource_version, ips)
            now = time.monotonic()
            for ip, svcs in holders.items():
                names = tuple(sorted(s.metadata.name for s in svcs))
                if len(svcs) < 2 or _may_share(svcs):
                    self._conflicts.pop(ip, None)
                    continue
                # Right after the soak changed one of them (its ports, its request) the old status stands
                # until the allocator decides again: a conflict is a violation if nobody just changed a
                # holder, or if it outlives the allocator's bound.
                first = self._conflicts.setdefault(ip, now)
                changed = max(self.sanctioned.get(n, 0.0) for n in names)
                if now - changed > REACT or now - first > REACT:
                    self.violation(f"I3: {ip} is on {list(names)} without sharing, for {now - first:.1f} s")
                    self._conflicts[ip] = now + 3600  # once per conflict

    def _check_addresses_untouched(self) -> None:
        """I1: every event on an address outside the prefix, or not host-length, was the soak's own."""
        for node, w in self.watchers.items():
            for t, kind, index, ip, plen in list(w.events):
                self.report.checks["I1 address events"] += 1
                inside = ipaddress.ip_address(ip) in NET
                host = plen == (32 if ":" not in ip else 128)
                if inside and host:
                    continue
                if ipaddress.ip_address(ip).is_link_local:
                    continue  # the veths' own IPv6 link-local addresses, made by the kernel
                if any(n == node and a == ip and p == plen and abs(t - at) < 5 for at, n, a, p in self.own):
                    continue
                self.violation(f"I1: {kind} of {ip}/{plen} on {node} (interface {index}) by someone else")


def _may_share(svcs: list[Any]) -> bool:
    """The sharing rules, written out here: one key, ports apart, all Cluster (or all Local, one selector)."""
    keys = {(s.metadata.annotations or {}).get(SHARE) for s in svcs}
    if len(keys) != 1 or None in keys:
        return False
    ports: set[tuple[str, int]] = set()
    for s in svcs:
        mine = {(p.protocol, p.port) for p in s.spec.ports or []}
        if mine & ports:
            return False
        ports |= mine
    policies = {s.spec.external_traffic_policy for s in svcs}
    if policies == {"Cluster"}:
        return True
    return policies == {"Local"} and len({json.dumps(s.spec.selector, sort_keys=True) for s in svcs}) == 1


def shrink_monitor_buffer(pid: int) -> None:
    """Shrinks the receive buffer of the netlink monitor of the agent ``pid`` to the kernel's minimum (a
    few notifications): its socket is found by its groups (address notifications) among the netlink
    sockets of its namespace, matched with the agent's own descriptors, and taken with pidfd_getfd."""
    ours = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            ours[os.readlink(f"/proc/{pid}/fd/{fd}")] = int(fd)
    target = None
    for line in Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]:
        fields = line.split()  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        groups, inode = int(fields[3], 16), fields[9]
        if fields[1] == "0" and groups & 0x110 == 0x110 and f"socket:[{inode}]" in ours:
            target = ours[f"socket:[{inode}]"]
    if target is None:
        raise OSError(f"agent {pid} has no socket subscribed to address notifications")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(PIDFD_GETFD, pidfd, target, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
    finally:
        os.close(pidfd)
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    finally:
        sock.close()  # our copy; the agent's stays open


def run_soak(seed: int, duration: float, nodes: int = 3, lifetime: int = 6, log=print) -> Report:  # type: ignore[no-untyped-def]
    with Lab(
        nodes,
        address_lifetime=lifetime,
        weight_classes=CLASSES,
        drain_seconds=DRAIN,
        log=lambda m: log("  " + m),
    ) as lab:
        soak = Soak(lab, seed, log)
        report = soak.run(duration)
        with contextlib.suppress(Exception):
            log(report.table())
        return report
