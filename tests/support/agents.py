"""Simulated nodes for integration tests: a network namespace per node, a real Node object, and a real
``l3lb run`` agent inside the namespace, under the least-privilege identity from ``deploy/rbac.yaml``.

Each test gets its own prefix and load-balancer class, so agents of one test never act on another test's
Services even while an old namespace is still being deleted.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubelet import create_lb_service, create_node, grant_leases, wait_for
from kubernetes import client
from netns import ApiRelay, NetNS

_prefixes = itertools.count(1)


def agent_argv(
    prefixes: list[str], node: str, kubeconfig: Path, lease_namespace: str, *extra: str
) -> list[str]:
    """``l3lb run`` as a simulated node runs it, under the given identity and Lease namespace. Without a
    drain (``--drain-seconds 0``) unless ``extra`` asks for one: the tests of stops that drain say so."""
    argv = [sys.executable, "-m", "l3lb", "run"]
    for prefix in prefixes:
        argv += ["--prefix", prefix]
    return [
        *argv,
        "--node-name",
        node,
        "--kubeconfig",
        str(kubeconfig),
        "--lease-namespace",
        lease_namespace,
        "--drain-seconds",
        "0",
        *extra,
    ]


@dataclass
class SimNode:
    name: str
    ns: NetNS
    argv: list[str]
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self, *extra: str) -> SimNode:
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        self.proc = self.ns.popen([*self.argv, *extra], "agent")
        self.starts += 1
        return self

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Waits for the agent's initial sync since its last start (its "initial sync done" line)."""
        wait_for(
            lambda: self.log().count("initial sync done") >= self.starts,
            timeout=timeout,
            what=f"{self.name}: initial sync",
        )

    def signal(self, sig: signal.Signals, timeout: float = 15.0) -> int | None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.ns.procs.remove(self.proc) if self.proc in self.ns.procs else None

    def addresses(self) -> set[str]:
        return self.ns.host_addresses()

    def log(self) -> str:
        assert self.ns.logdir is not None
        return (self.ns.logdir / f"{self.ns.name}-agent.log").read_text()

    def metrics(self) -> dict[str, float]:
        """The agent's Prometheus samples: {'name{labels}': value}, read inside its namespace."""
        code = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9655/metrics').read().decode())"
        out = {}
        for line in self.ns.run([sys.executable, "-c", code]).stdout.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def mark(self) -> int:
        """A place in the agent's log: wait_handled(..., since=mark) looks only after it."""
        return len(self.log())

    def wait_handled(self, what: str, since: int = 0, timeout: float = 15.0, by: str = "agent") -> None:
        """Waits until the agent's loop (by="agent") or its allocator (by="allocator") has acted on a
        message (their debug line "handled ... <what> ..."): before asserting that something did not
        happen."""
        pattern = re.compile(rf"l3lb\.\w+\.{by}: handled [^\n]*{re.escape(what)}")
        wait_for(lambda: pattern.search(self.log(), since), timeout=timeout, what=f"{self.name}: {by} {what}")


@dataclass
class Lab:
    """The nodes of one test, all watching one prefix and one class."""

    core: client.CoreV1Api
    relay: ApiRelay
    kubeconfig: Path
    workdir: Path
    namespace: str
    index: int = field(default_factory=lambda: next(_prefixes))
    nodes: list[SimNode] = field(default_factory=list)
    dual: bool = False
    """Give the agents an IPv6 prefix too."""

    @property
    def prefix(self) -> str:
        return f"10.{100 + self.index // 256}.{self.index % 256}.0/24"

    @property
    def prefix6(self) -> str:
        return f"fd00:{self.index:x}::/120"

    def ip(self, host: int) -> str:
        return self.prefix.rsplit(".", 1)[0] + f".{host}"

    def ip6(self, host: int) -> str:
        return f"fd00:{self.index:x}::{host:x}"

    @property
    def lb_class(self) -> str:
        return f"l3lb.io/{self.namespace}"

    def service(
        self,
        name: str,
        *,
        ips: str | None = None,
        policy: str = "Cluster",
        selector: dict[str, str] | None = None,
        **kw: Any,
    ) -> None:
        """A LoadBalancer Service of this test's class (``ips`` requested by annotation)."""
        create_lb_service(
            self.core,
            self.namespace,
            name,
            selector=selector or {"app": "web"},
            policy=policy,
            lb_class=self.lb_class,
            ips=ips,
            **kw,
        )

    def node(
        self,
        suffix: str,
        *,
        ready: bool = True,
        labels: dict[str, str] | None = None,
        start: bool = True,
        args: tuple[str, ...] = ("--address-lifetime", "30"),
        config: Path | None = None,
    ) -> SimNode:
        """A new node ``<namespace>-<suffix>``: its Node object, namespace and (unless start=False) agent;
        with ``config``, the agent reads its pools from that file instead of taking this test's prefix."""
        name = f"{self.namespace}-{suffix}"
        if not self.nodes:
            grant_leases(client.RbacAuthorizationV1Api(self.core.api_client), self.namespace)
        create_node(self.core, name, ready=ready, labels=labels)
        ns = NetNS(self.workdir)
        self.relay.attach(ns)
        prefixes = [] if config else [self.prefix, self.prefix6] if self.dual else [self.prefix]
        if config:
            args = ("--config", str(config), *args)
        argv = agent_argv(
            prefixes,
            name,
            self.kubeconfig,
            self.namespace,
            "--load-balancer-class",
            self.lb_class,
            "--no-default-class",
            "--log-level",
            "debug",
            *args,
        )
        node = SimNode(name, ns, argv)
        self.nodes.append(node)
        return node.start() if start else node

    def close(self) -> None:
        for node in self.nodes:
            node.ns.close()
        for node in self.nodes:
            self.core.delete_node(node.name)


def wait_addresses(node: SimNode, expected: set[str], timeout: float = 15.0) -> None:
    """Waits until ``node`` holds exactly ``expected`` (host-length addresses on lo)."""
    try:
        wait_for(lambda: node.addresses() == expected, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"{node.name} holds {sorted(node.addresses())}, expected {sorted(expected)}; "
            f"agent log:\n{node.log()[-3000:]}"
        ) from None


def status_all_argv(node: SimNode, lab: Lab, *args: str) -> list[str]:
    """``l3lb status --all`` as run on ``node`` for the lab's Services (add ``-o json`` for the rows)."""
    return [
        *node.argv[:3],
        "status",
        "--all",
        *args,
        "--kubeconfig",
        str(lab.kubeconfig),
        "--load-balancer-class",
        lab.lb_class,
        "--no-default-class",
    ]
