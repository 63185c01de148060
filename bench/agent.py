"""Benchmark of one node agent at scale: event -> address latency, CPU, memory and sync times against the
size of the cluster, quiet or under endpoint churn elsewhere.

Real control plane (with an audit log to count the agent's requests), one real agent in a network
namespace under the least-privilege identity, real netlink. Services are selector-less and the benchmark
writes their EndpointSlices itself (10 endpoints each), so each timing starts at a write it controls rather
than at the EndpointSlice controller's batching. A fifth of the Services are Local (half of those with an
endpoint on the measured node n00), the rest Cluster, all with ``allocateLoadBalancerNodePorts: false``.
The measured events flip the n00 endpoint of Local Services (not ready -> the address goes, ready -> it
comes back). Run as root::

    .venv/bin/python bench/agent.py [--services 1000] [--nodes 100] [--events 200] [--churn 200]
    .venv/bin/python bench/agent.py --sweep        # 1k, 2.5k, 10k Services; quiet and under churn at each
    .venv/bin/python bench/agent.py --follower     # an agent that is not the allocator's leader

The one agent is the allocator's leader, which also keeps every Service's conditions (in a worker process
it starts: its CPU is counted with the agent's, its memory apart, as ``worker_rss_mib`` and, without the
shared libraries it maps as the agent does, ``worker_private_mib``): the benchmark waits until their first
pass is written before it measures, so that pass is not in the figures (every further change of a measured
Service's Announced condition is). ``--follower`` gives the allocator's Lease to another holder first, so
the agent measured is what every other node runs: no allocator, no conditions.

Each point prints: initial sync (agent start -> every address on lo), event -> address p50/p99, CPU per
1,000 events, RSS, the mean duration of a periodic full sync, and the agent's API reads per event.
``--sweep`` writes bench/results/agent-sweep.json and a PNG of the figures against cluster size.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import multiprocessing
import os
import queue
import re
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

from kubelet import create_node  # noqa: E402
from kubernetes import client, config, utils  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402
from netns import AddressEvents, ApiRelay, NetNS  # noqa: E402
from stats import pct  # noqa: E402
from testenv import ControlPlane, interrupt_on_sigterm  # noqa: E402

from l3lb.k8s.api import Api  # noqa: E402
from l3lb.k8s.leader import LEASE_NAME  # noqa: E402

ENDPOINTS_PER_SLICE = 10
NS = "bench"
AGENT_USER = "l3lb-agent"
SWEEP = (1000, 2500, 10000)
TARGETS = {
    "p50_ms": 4.0,
    "p99_ms": 10.0,
    "cpu_s_per_1000": 1.5,
    "rss_mib_10k": 96.0,
    "rss_mib_1k": 64.0,
    "initial_sync_s": 5.0,
    "full_sync_ms": 50.0,
    "churn_p99_ms": 20.0,
}


class Layout:
    """Which Services exist and where their endpoints are, for ``services`` Services on ``nodes`` nodes."""

    def __init__(self, services: int, nodes: int) -> None:
        self.services, self.nodes = services, nodes

    @staticmethod
    def local(i: int) -> bool:
        return i % 5 == 0

    def endpoint_nodes(self, i: int) -> list[int]:
        """Ten distinct nodes; n00 is among them for a Local Service exactly when i % 10 == 0."""
        first = (i * 7) % self.nodes if i % 10 else 0
        return [
            (first + j * (self.nodes // ENDPOINTS_PER_SLICE)) % self.nodes for j in range(ENDPOINTS_PER_SLICE)
        ]

    def ip(self, i: int) -> str:
        return f"10.100.{i // 250}.{i % 250 + 1}"

    def expected(self) -> set[str]:
        """What n00 announces: every Cluster Service, and the Local ones with an endpoint on n00."""
        return {self.ip(i) for i in range(self.services) if not self.local(i) or i % 10 == 0}

    def measured(self) -> list[int]:
        return [i for i in range(self.services) if self.local(i) and i % 10 == 0]

    def churned(self) -> list[int]:
        return [i for i in range(self.services) if not self.local(i)]

    def endpoints(self, i: int, *, n00_ready: bool = True, flip: int | None = None) -> list[dict]:
        """The endpoints of Service ``i``; ``flip``: that endpoint (not on n00) not ready, as in a rollout."""
        eps = []
        for j, node in enumerate(self.endpoint_nodes(i)):
            ready = (n00_ready if node == 0 else True) and j != flip
            eps.append(
                {
                    "addresses": [f"10.{200 + i // 250}.{i % 250}.{j + 1}"],
                    "nodeName": f"n{node:02d}",
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                }
            )
        return eps


def setup(core: client.CoreV1Api, disc: client.DiscoveryV1Api, layout: Layout) -> None:
    core.create_namespace({"metadata": {"name": NS}})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: create_node(core, f"n{n:02d}"), range(layout.nodes)))

    def one(i: int) -> None:
        name = f"svc-{i:05d}"
        core.create_namespaced_service(
            NS,
            {
                "metadata": {"name": name},
                "spec": {
                    "type": "LoadBalancer",
                    "externalTrafficPolicy": "Local" if layout.local(i) else "Cluster",
                    "allocateLoadBalancerNodePorts": False,
                    "ports": [{"port": 80, "protocol": "TCP"}],
                },
            },
        )
        core.patch_namespaced_service_status(
            name, NS, {"status": {"loadBalancer": {"ingress": [{"ip": layout.ip(i), "ipMode": "VIP"}]}}}
        )
        disc.create_namespaced_endpoint_slice(
            NS,
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "l3lb-bench",
                    },
                },
                "addressType": "IPv4",
                "ports": [{"port": 8080, "protocol": "TCP"}],
                "endpoints": layout.endpoints(i),
            },
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(layout.services)))


def descendants(pid: int) -> list[int]:
    """The processes a process started that still run (the leader's conditions worker), recursively."""
    out = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            out += [child, *descendants(child)]
    return out


def _one(pid: int) -> tuple[float, float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024, cpu


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds) of the agent's process, the CPU with that of the processes it
    started (the leader's conditions worker: its work is the agent's too)."""
    rss, hwm, cpu = _one(pid)
    return rss, hwm, cpu + worker_cpu(pid)


def worker_cpu(pid: int) -> float:
    """CPU seconds of the processes the agent started (on the leader, its conditions worker)."""
    return sum(_one(child)[2] for child in descendants(pid))


def worker_rss(pid: int) -> float:
    """RSS MiB of the processes the agent started (on the leader, its conditions worker), with the pages of
    shared libraries that it maps as the agent does, which ``worker_private`` leaves out."""
    return sum(_one(child)[0] for child in descendants(pid))


def worker_private(pid: int) -> float:
    """MiB of the pages only the agent's worker holds: what it adds to the machine's memory."""
    total = 0
    for child in descendants(pid):
        for line in Path(f"/proc/{child}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def agent_requests(audit: Path, since: float, until: float) -> dict[str, int]:
    """The agent's requests in [since, until] (wall clock), by "verb resource", from the audit log."""
    counts: dict[str, int] = {}
    for line in audit.read_text().splitlines():
        e = json.loads(line)
        if e.get("user", {}).get("username") != AGENT_USER or e.get("stage") not in (
            "ResponseStarted",
            "ResponseComplete",
        ):
            continue
        if e["stage"] == "ResponseComplete" and e["verb"] == "watch":
            continue  # a watch logs ResponseStarted when it begins; count it once
        stamp = e["requestReceivedTimestamp"]
        t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        t += float("0." + stamp[20:-1] or "0")
        if since <= t <= until:
            what = f"{e['verb']} {e.get('objectRef', {}).get('resource', '?')}"
            counts[what] = counts.get(what, 0) + 1
    return counts


def agent_metrics(ns: NetNS) -> str:
    """The agent's /metrics, read inside its namespace."""
    return ns.run(
        [
            sys.executable,
            "-c",
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9655/metrics').read().decode())",
        ]
    ).stdout


def full_syncs(ns: NetNS) -> tuple[float, float]:
    """(sum of seconds, count) of the agent's full syncs."""
    text = agent_metrics(ns)
    got = dict(re.findall(r'^l3lb_reconcile_duration_seconds_(sum|count)\{sync="full"\} (\S+)$', text, re.M))
    return float(got.get("sum", 0)), float(got.get("count", 0))


def event_to_apply(ns: NetNS) -> dict[float, float]:
    """The agent's own l3lb_event_to_apply_seconds histogram: {upper bound in ms: count}."""
    found = re.findall(r'^l3lb_event_to_apply_seconds_bucket\{le="([^"]+)"\} (\S+)$', agent_metrics(ns), re.M)
    return {float(le) * 1000: float(n) for le, n in found}


CHURN_WRITERS = 4


def churn(admin: str, layout: Layout, rate: float, stop: Any, done: Any, part: int) -> None:
    """A rolling update elsewhere: ``rate`` EndpointSlice writes a second on Cluster Services (this writer's
    share of them), each taking one endpoint (not on n00) out of ready, then the next one; what n00
    announces never changes. Each writer is a process of its own, so none holds the measuring process's
    GIL, and there are several because one write takes longer than 1/200 s on a large cluster."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    disc = client.DiscoveryV1Api(config.new_client_from_config(admin))
    targets = layout.churned()[part::CHURN_WRITERS]
    k = 0
    next_at = time.monotonic()
    while not stop.is_set():
        i = targets[k % len(targets)]
        flip = (k // len(targets)) % ENDPOINTS_PER_SLICE
        if layout.endpoint_nodes(i)[flip] == 0:
            flip = (flip + 1) % ENDPOINTS_PER_SLICE
        disc.patch_namespaced_endpoint_slice(
            f"svc-{i:05d}", NS, {"endpoints": layout.endpoints(i, flip=flip)}
        )
        with done.get_lock():
            done.value += 1
        k += 1
        next_at += 1 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))


def deliveries(admin: str, stop: Any, out: Any) -> None:
    """Another watcher of the EndpointSlices, in a process of its own: when the apiserver delivers each
    change (time.monotonic() is the same clock in every process). The floor of the event -> address time."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ended by terminate(), quietly
    api = config.new_client_from_config(admin)
    rv = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(NS, limit=1).metadata.resource_version
    query = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": 600}
    resp = Api(api).request(
        "GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices", query=query, timeout=(5, 620)
    )
    for line in iter_resp_lines(resp):
        if stop.is_set():
            break
        event = json.loads(line)
        out.put((event["object"]["metadata"]["name"], time.monotonic()))


def all_added(watcher: AddressEvents, expected: set[str], timeout: float) -> float:
    """When the last of ``expected`` was added (from the address events, which cost nothing to watch: polling
    ``ip -j addr`` at 9,000 addresses would take most of a core from the agent being measured)."""
    held: set[str] = set()
    seen = 0

    def done() -> float | None:
        nonlocal seen
        last = None
        for at, kind, ip in watcher.events[seen:]:
            (held.add if kind == "add" else held.discard)(ip)
            last = at
        seen = len(watcher.events)
        return last if last is not None and expected <= held else None

    return watcher.wait_until(done, timeout)


def hold_lease_elsewhere(api_client: client.ApiClient) -> None:
    """The allocator's Lease, held for an hour by another agent (so the measured one never leads)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.CoordinationV1Api(api_client).create_namespaced_lease(
        "kube-system",
        {
            "metadata": {"name": LEASE_NAME},
            "spec": {"holderIdentity": "another-agent", "leaseDurationSeconds": 3600, "renewTime": now},
        },
    )


def conditions_written(ns: NetNS, services: int, timeout: float = 300) -> float:
    """Seconds until the leader's first pass of conditions is written (none to write: 0)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        text = agent_metrics(ns)
        written = re.findall(r'^l3lb_condition_writes_total\{outcome="written"\} (\S+)$', text, re.M)
        backlog = re.findall(r"^l3lb_condition_backlog (\S+)$", text, re.M)
        if not backlog or (float(backlog[0]) == 0 and written and float(written[0]) >= services):
            return time.monotonic() - t0
        time.sleep(1)
    raise RuntimeError(f"the leader's conditions were not written in {timeout:.0f} s")


def run_point(services: int, nodes: int, events: int, churn_rate: float, follower: bool = False) -> dict:
    layout = Layout(services, nodes)
    with (
        tempfile.TemporaryDirectory(prefix="l3lb-bench-") as tmp,
        ControlPlane(Path(tmp) / "cp", audit=(AGENT_USER,)) as cp,
    ):
        api = config.new_client_from_config(str(cp.admin_kubeconfig))
        core, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        utils.create_from_yaml(api, str(REPO / "deploy" / "rbac.yaml"))
        kubeconfig = cp.identity(AGENT_USER, ["l3lb:agents"])
        t = time.monotonic()
        setup(core, disc, layout)
        print(
            f"  setup: {services} Services, {services * ENDPOINTS_PER_SLICE} endpoints, {nodes} nodes "
            f"in {time.monotonic() - t:.0f} s",
            flush=True,
        )
        relay = ApiRelay(cp.state.apiserver_port, tmp)
        try:
            with NetNS(tmp) as ns:
                relay.attach(ns)
                watcher = AddressEvents(ns)
                expected = layout.expected()
                t0 = time.monotonic()
                argv = [
                    sys.executable,
                    "-m",
                    "l3lb",
                    "run",
                    "--prefix",
                    "10.100.0.0/16",
                    "--node-name",
                    "n00",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--log-level",
                    "warning",
                ]
                if follower:
                    hold_lease_elsewhere(api)
                agent = ns.popen(argv, "agent")
                initial = all_added(watcher, expected, timeout=300) - t0
                if ns.host_addresses() != expected:  # and nothing else: checked once, not polled
                    raise SystemExit("the agent's addresses are not the expected ones")
                time.sleep(12)  # past the first periodic full sync and its renewals
                if not follower:
                    waited = conditions_written(ns, services)
                    print(f"  the leader's conditions written {waited:.0f} s after that", flush=True)
                rss0, _, idle0 = proc_stats(agent.pid)
                time.sleep(20)  # two periodic full syncs and their renewals, and nothing else
                idle_cpu = (proc_stats(agent.pid)[2] - idle0) / 20
                full0 = full_syncs(ns)
                print(
                    f"  initial sync: {len(expected)} addresses in {initial:.2f} s; RSS {rss0:.1f} MiB",
                    flush=True,
                )
                results = {}
                for rate in (0.0, churn_rate) if churn_rate else (0.0,):
                    results["churn" if rate else "quiet"] = measure(
                        disc, cp.admin_kubeconfig, ns, layout, watcher, agent.pid, rate, events
                    )
                full1 = full_syncs(ns)
                while full1[1] - full0[1] < 3:  # at least three periodic full syncs to average
                    time.sleep(1)
                    full1 = full_syncs(ns)
                rss1, hwm, _ = proc_stats(agent.pid)
                rss_worker, private_worker = worker_rss(agent.pid), worker_private(agent.pid)
                ns.stop(agent)
                quiet = results["quiet"]
                wall0, wall1 = quiet.pop("_wall")
                reqs = agent_requests(cp.audit_log, wall0, wall1)
                if "churn" in results:
                    results["churn"].pop("_wall")
        except BaseException:
            for name in ("kube-apiserver", "etcd"):  # why, if the control plane went away
                log = cp.logs / f"{name}.log"
                if log.exists():
                    print(f"--- last lines of {name}.log", *log.read_text().splitlines()[-15:], sep="\n")
            raise
        finally:
            relay.close()
    full_n = full1[1] - full0[1]
    return {
        "services": services,
        "local_services": sum(1 for i in range(services) if layout.local(i)),
        "endpoints": services * ENDPOINTS_PER_SLICE,
        "nodes": nodes,
        "addresses_on_lo": len(expected),
        "initial_sync_s": round(initial, 2),
        "full_sync_mean_ms": round((full1[0] - full0[0]) / full_n * 1000, 1) if full_n else None,
        "full_syncs": int(full_n),
        "idle_cpu_percent": round(idle_cpu * 100, 2),
        "rss_mib": round(rss1, 1),
        "peak_rss_mib": round(hwm, 1),
        "worker_rss_mib": round(rss_worker, 1),
        "worker_private_mib": round(private_worker, 1),
        "agent_reads_per_event": round(
            sum(v for k, v in reqs.items() if k.split()[0] in ("get", "list") and "leases" not in k)
            / quiet["events"],
            3,
        ),
        **results,
    }


def measure(
    disc: client.DiscoveryV1Api,
    admin: Path,
    ns: NetNS,
    layout: Layout,
    watcher: AddressEvents,
    pid: int,
    rate: float,
    events: int,
) -> dict:
    """The measured events, with ``rate`` churn writes a second elsewhere (from their own API client)."""
    stop, done = multiprocessing.Event(), multiprocessing.Value("L", 0)
    delivered: Any = multiprocessing.Queue()
    observer = multiprocessing.Process(target=deliveries, args=(str(admin), stop, delivered), daemon=True)
    observer.start()
    writers = [
        multiprocessing.Process(target=churn, args=(str(admin), layout, rate / CHURN_WRITERS, stop, done, k))
        for k in range(CHURN_WRITERS if rate else 0)
    ]
    for w in writers:
        w.start()
    if writers:
        time.sleep(2)
    _, _, cpu0 = proc_stats(pid)
    worker0 = worker_cpu(pid)
    inside0 = event_to_apply(ns)
    churn0, t0 = done.value, time.monotonic()
    ms: list[float] = []
    write_ms: list[float] = []
    writes: list[tuple[str, float]] = []
    wall0 = time.time()
    for i in itertools.islice(itertools.cycle(layout.measured()), events // 2):
        for ready, kind in ((False, "del"), (True, "add")):
            start = time.monotonic()
            disc.patch_namespaced_endpoint_slice(
                f"svc-{i:05d}", NS, {"endpoints": layout.endpoints(i, n00_ready=ready)}
            )
            write_ms.append((time.monotonic() - start) * 1000)
            writes.append((f"svc-{i:05d}", start))
            ms.append((watcher.wait(kind, layout.ip(i), start) - start) * 1000)
    wall1 = time.time()
    _, _, cpu1 = proc_stats(pid)
    worker1 = worker_cpu(pid)
    elapsed = time.monotonic() - t0
    churned = done.value - churn0
    inside = {le: n - inside0.get(le, 0) for le, n in event_to_apply(ns).items()}
    stop.set()
    for w in writers:
        w.join()
    # The churn has stopped: what the other watcher received is all in the queue within moments (its
    # feeder thread flushes as it goes; empty() alone could end the reading before that).
    seen: dict[str, list[float]] = {}
    with contextlib.suppress(queue.Empty):
        while True:
            name, at = delivered.get(timeout=1.0)
            seen.setdefault(name, []).append(at)
    observer.terminate()
    # a write the other watcher never saw delivered counts as 60 s
    delivery_ms = [
        (min((t for t in seen.get(n, ()) if t >= s), default=s + 60) - s) * 1000 for n, s in writes
    ]
    if any(w.exitcode for w in writers):
        raise RuntimeError("a churn writer failed (its traceback is above): the figures would be wrong")
    return {
        "events": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        # the write alone, until the apiserver answered (the agent may act before the answer arrives)
        "api_write_p50_ms": round(pct(write_ms, 50), 2),
        "api_write_p99_ms": round(pct(write_ms, 99), 2),
        # the same change seen by another watcher: the apiserver's own delivery, the floor of the above
        "apiserver_delivery_p50_ms": round(pct(delivery_ms, 50), 2),
        "apiserver_delivery_p99_ms": round(pct(delivery_ms, 99), 2),
        # inside the agent: from an event's arrival (parsed) to the end of its sync, as a share of events
        "agent_share_within_ms": {
            f"{le:g}": round(n / inside[float("inf")], 3)
            for le, n in inside.items()
            if le in (1, 2.5, 5, 10, 25, 50)
        }
        if inside.get(float("inf"))
        else {},
        "churn_writes_per_s": round(churned / elapsed, 1),
        # CPU of the agent over the window, per 1,000 measured events (under churn it includes the churn's)
        "cpu_s_per_1000_events": round((cpu1 - cpu0) / len(ms) * 1000, 2),
        # of which the leader's conditions worker
        "worker_cpu_s_per_1000_events": round((worker1 - worker0) / len(ms) * 1000, 2),
        "_wall": (wall0, wall1),
    }


def print_table(points: list[dict]) -> None:
    head = (
        "Services",
        "endpoints",
        "on lo",
        "p50 ms",
        "p99 ms",
        "CPU s/1k",
        "RSS MiB",
        "initial s",
        "full sync ms",
        "churn p99 ms",
    )
    rows = [
        (
            f"{p['services']:,}",
            f"{p['endpoints']:,}",
            f"{p['addresses_on_lo']:,}",
            f"{p['quiet']['p50_ms']}",
            f"{p['quiet']['p99_ms']}",
            f"{p['quiet']['cpu_s_per_1000_events']}",
            f"{p['rss_mib']}",
            f"{p['initial_sync_s']}",
            f"{p['full_sync_mean_ms']}",
            f"{p['churn']['p99_ms']}" if "churn" in p else "-",
        )
        for p in points
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["services"] for p in points]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    ax.plot(x, [p["quiet"]["p50_ms"] for p in points], "o-", label="p50, quiet")
    ax.plot(x, [p["quiet"]["p99_ms"] for p in points], "o-", label="p99, quiet")
    if all("churn" in p for p in points):
        ax.plot(x, [p["churn"]["p50_ms"] for p in points], "s--", label="p50, 200/s churn elsewhere")
        ax.plot(x, [p["churn"]["p99_ms"] for p in points], "s--", label="p99, 200/s churn elsewhere")
    ax.plot(
        x,
        [p["quiet"]["apiserver_delivery_p50_ms"] for p in points],
        "k:",
        label="apiserver delivery p50 (floor)",
    )
    if all("churn" in p for p in points):
        ax.plot(
            x,
            [p["churn"]["apiserver_delivery_p99_ms"] for p in points],
            "k--",
            label="apiserver delivery p99 under churn (floor)",
        )
    ax.set_title("EndpointSlice written -> address on lo (ms)")
    ax.legend(fontsize=8)
    axes[0][1].plot(x, [p["quiet"]["cpu_s_per_1000_events"] for p in points], "o-")
    axes[0][1].set_title("agent CPU seconds per 1,000 events (quiet)")
    axes[1][0].plot(x, [p["rss_mib"] for p in points], "o-")
    axes[1][0].set_title("agent RSS (MiB)")
    axes[1][1].plot(x, [p["initial_sync_s"] for p in points], "o-", label="initial sync (s, left)")
    right = axes[1][1].twinx()
    right.plot(x, [p["full_sync_mean_ms"] or 0 for p in points], "s--", color="C1")
    right.set_ylim(bottom=0)
    right.set_ylabel("periodic full sync (ms)", color="C1")
    axes[1][1].set_title("initial sync (s) and periodic full sync (ms, right)")
    axes[1][1].legend(fontsize=8)
    for row in axes:
        for a in row:
            a.set_xscale("log")
            a.set_xticks(x, [f"{v:,}" for v in x])
            a.set_xlabel("LoadBalancer Services (10 endpoints each)")
            a.set_ylim(bottom=0)
    fig.suptitle("l3lb agent at scale (one run, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--events", type=int, default=1000, help="measured events per point (half del, half add)")
    ap.add_argument(
        "--churn", type=float, default=200.0, help="writes/s elsewhere for the churn run (0: none)"
    )
    ap.add_argument("--sweep", action="store_true", help=f"every point of {SWEEP}, then the table and a PNG")
    ap.add_argument("--follower", action="store_true", help="another agent holds the allocator's Lease")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/agent.py needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = SWEEP if args.sweep else (args.services,)
    points = []
    for n in sizes:
        print(f"{n:,} Services on {args.nodes} nodes", flush=True)
        points.append(run_point(n, args.nodes, args.events, args.churn, args.follower))
        print(json.dumps(points[-1], indent=2), flush=True)
    print()
    print_table(points)
    out = args.out or REPO / "bench" / "results" / ("agent-sweep.json" if args.sweep else "agent.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"targets": TARGETS, "points": points}, indent=2) + "\n")
    print(f"written to {out}")
    if args.sweep:
        plot(points, out.with_suffix(".png"))
        print(f"plot in {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
