"""Benchmark of one node agent at scale: 1,000 LoadBalancer Services, 10,000 endpoints, 50 nodes.

Real control plane (with an audit log to count the agent's requests), one real agent in a network
namespace under the least-privilege identity, real netlink. Endpoints are written as EndpointSlices by the
benchmark itself (selector-less Services), so the timing starts at a write we control rather than at the
EndpointSlice controller's batching. Run as root::

    .venv/bin/python bench/agent.py [--events 200] [--out bench/results/agent.json]

Prints: initial sync time, latency from an endpoint's ready condition written in the API to the address
added on (or removed from) lo, the agent's API requests during the events, its RSS and CPU per 1,000 events.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from kubelet import create_node  # noqa: E402
from kubernetes import client, config, utils  # noqa: E402
from netns import AddressEvents, ApiRelay, NetNS  # noqa: E402
from testenv import ControlPlane, interrupt_on_sigterm  # noqa: E402

SERVICES, ENDPOINTS_PER_SLICE, NODES = 1000, 10, 50
NS = "bench"
AGENT_USER = "l3lb-agent"


def svc_ip(i: int) -> str:
    return f"10.100.{i // 250}.{i % 250 + 1}"


def policy(i: int) -> str:
    """i % 5 == 1: Cluster. Others Local; those with i % 5 == 0 have an endpoint on n00, the measured node."""
    return "Cluster" if i % 5 == 1 else "Local"


def endpoints(i: int, local_ready: bool = True) -> list[dict]:
    eps = []
    for j in range(ENDPOINTS_PER_SLICE):
        node = (i + j * 5) % NODES
        ready = local_ready if node == 0 else True
        eps.append(
            {
                "addresses": [f"10.{200 + i // 250}.{i % 250}.{j + 1}"],
                "nodeName": f"n{node:02d}",
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
            }
        )
    return eps


def setup(core: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    core.create_namespace({"metadata": {"name": NS}})
    for n in range(NODES):
        create_node(core, f"n{n:02d}")

    def one(i: int) -> None:
        name = f"svc-{i:04d}"
        core.create_namespaced_service(
            NS,
            {
                "metadata": {"name": name},
                "spec": {
                    "type": "LoadBalancer",
                    "externalTrafficPolicy": policy(i),
                    "allocateLoadBalancerNodePorts": False,
                    "ports": [{"port": 80, "protocol": "TCP"}],
                },
            },
        )
        core.patch_namespaced_service_status(
            name, NS, {"status": {"loadBalancer": {"ingress": [{"ip": svc_ip(i), "ipMode": "VIP"}]}}}
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
                "endpoints": endpoints(i),
            },
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(SERVICES)))


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024, cpu


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
        t = (
            time.mktime(time.strptime(e["requestReceivedTimestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
            - time.timezone
        )
        t += float("0." + e["requestReceivedTimestamp"][20:-1] or "0")
        if since <= t <= until:
            what = f"{e['verb']} {e.get('objectRef', {}).get('resource', '?')}"
            counts[what] = counts.get(what, 0) + 1
    return counts


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200, help="ready->not-ready->ready cycles (2 events each)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "agent.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/agent.py needs root (network namespaces)", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="l3lb-bench-") as tmp,
        ControlPlane(Path(tmp) / "cp", audit=True) as cp,
    ):
        api = config.new_client_from_config(str(cp.admin_kubeconfig))
        core, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        utils.create_from_yaml(api, str(REPO / "deploy" / "rbac.yaml"))
        kubeconfig = cp.identity(AGENT_USER, ["l3lb:agents"])
        t = time.monotonic()
        setup(core, disc)
        print(
            f"setup: {SERVICES} Services, {SERVICES * ENDPOINTS_PER_SLICE} endpoints, {NODES} nodes "
            f"in {time.monotonic() - t:.1f}s"
        )
        relay = ApiRelay(cp.state.apiserver_port, tmp)
        try:
            with NetNS(tmp) as ns:
                relay.attach(ns)
                watcher = AddressEvents(ns)
                expected = {svc_ip(i) for i in range(SERVICES) if i % 5 in (0, 1)}
                t0 = time.monotonic()
                agent = ns.popen(
                    [
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
                    ],
                    "agent",
                )
                while ns.host_addresses() != expected:
                    if time.monotonic() - t0 > 120:
                        raise SystemExit("the agent did not converge in 120 s")
                    time.sleep(0.05)
                initial = time.monotonic() - t0
                time.sleep(2)
                rss0, _, cpu0 = proc_stats(agent.pid)
                print(
                    f"initial sync: {len(expected)} addresses in {initial * 1000:.0f} ms; RSS {rss0:.1f} MiB"
                )

                targets = [i for i in range(SERVICES) if i % 5 == 0][: args.events]
                add_ms: list[float] = []
                del_ms: list[float] = []
                wall0 = time.time()
                for i in targets:
                    for ready, kind, out in ((False, "del", del_ms), (True, "add", add_ms)):
                        start = time.monotonic()
                        disc.patch_namespaced_endpoint_slice(
                            f"svc-{i:04d}", NS, {"endpoints": endpoints(i, ready)}
                        )
                        out.append((watcher.wait(kind, svc_ip(i), start) - start) * 1000)
                wall1 = time.time()
                time.sleep(1)
                rss1, hwm, cpu1 = proc_stats(agent.pid)
                reqs = agent_requests(cp.audit_log, wall0, wall1)
                n_events = len(add_ms) + len(del_ms)
                result = {
                    "services": SERVICES,
                    "endpoints": SERVICES * ENDPOINTS_PER_SLICE,
                    "nodes": NODES,
                    "initial_sync_ms": round(initial * 1000, 1),
                    "addresses": len(expected),
                    "ready_to_add_ms": {
                        "n": len(add_ms),
                        "p50": round(pct(add_ms, 50), 2),
                        "p99": round(pct(add_ms, 99), 2),
                        "max": round(max(add_ms), 2),
                    },
                    "notready_to_del_ms": {
                        "n": len(del_ms),
                        "p50": round(pct(del_ms, 50), 2),
                        "p99": round(pct(del_ms, 99), 2),
                        "max": round(max(del_ms), 2),
                    },
                    "agent_requests_during_events": reqs,
                    # reads per event must be 0; the writes are the rate-limited Announced/Withdrawn Events;
                    # the Lease requests are the election's, on a timer, not per event
                    "agent_reads_per_event": round(
                        sum(
                            v
                            for k, v in reqs.items()
                            if k.split()[0] in ("get", "list") and "leases" not in k
                        )
                        / n_events,
                        3,
                    ),
                    "agent_event_writes_per_event": round(
                        sum(v for k, v in reqs.items() if k.endswith(" events")) / n_events, 3
                    ),
                    "rss_mib": round(rss1, 1),
                    "peak_rss_mib": round(hwm, 1),
                    "cpu_s_per_1000_events": round((cpu1 - cpu0) / n_events * 1000, 2),
                }
                ns.stop(agent)
        finally:
            relay.close()
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
