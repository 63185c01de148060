"""Benchmark of the allocator: 1,000 Services allocated from scratch, and the allocation gap when the
leader dies (SIGKILL: the Lease must expire, 15 s) or stops cleanly (SIGTERM: it releases the Lease).

Real control plane, three agents in network namespaces under the least-privilege identity. Run as root::

    .venv/bin/python bench/allocation.py [--services 1000] [--out bench/results/allocation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "tests")]

from agents import Lab  # noqa: E402
from kubelet import create_lb_service, lease_holder  # noqa: E402
from kubernetes import client, config, utils  # noqa: E402
from netns import ApiRelay  # noqa: E402
from testenv import ControlPlane, interrupt_on_sigterm  # noqa: E402


def allocated(core: client.CoreV1Api, ns: str) -> dict[str, str]:
    out = {}
    for s in core.list_namespaced_service(ns).items:
        ingress = s.status.load_balancer.ingress or []
        if ingress:
            out[s.metadata.name] = ingress[0].ip
    return out


def create(lab: Lab, names: list[str]) -> None:
    def one(name: str) -> None:
        create_lb_service(
            lab.core,
            lab.namespace,
            name,
            selector={"app": "x"},
            policy="Cluster",
            lb_class=lab.lb_class,
            annotations={},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))


def failover_gap(lab: Lab, sig: signal.Signals, tag: str) -> tuple[float, float]:
    """Creates a Service every 100 ms, stops the leader, and returns (the longest wait of a Service for its
    allocation, seconds from the signal until another agent holds the Lease). A poller watches both from
    before the signal, every 50 ms, so nothing is timed late."""
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    holders: list[tuple[float, str]] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            name = f"{tag}-{i:03d}"
            created[name] = time.monotonic()
            create_lb_service(
                lab.core, lab.namespace, name, selector={"app": "x"}, policy="Cluster", lb_class=lab.lb_class
            )
            i += 1
            stop.wait(0.1)

    def poll() -> None:
        while not stop.is_set() or set(created) - set(seen):
            now = time.monotonic()
            for name in allocated(lab.core, lab.namespace):
                seen.setdefault(name, now)
            holders.append((now, lease_holder(lab.core, lab.namespace) or ""))
            time.sleep(0.05)

    victim = next(n for n in lab.nodes if n.name == lease_holder(lab.core, lab.namespace))
    threads = [threading.Thread(target=stream), threading.Thread(target=poll)]
    for t in threads:
        t.start()
    time.sleep(2)
    assert victim.proc is not None
    signalled = time.monotonic()
    victim.proc.send_signal(sig)  # not waiting for it to exit: the poller is timing
    time.sleep(40)
    stop.set()
    for t in threads:
        t.join(90)
    victim.proc.wait(15)
    victim.start()
    takeover = next(t for t, h in holders if t > signalled and h and h != victim.name) - signalled
    return max(seen[n] - created[n] for n in created), takeover


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "allocation.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/allocation.py needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="l3lb-bench-") as tmp, ControlPlane(Path(tmp) / "cp") as cp:
        os.chmod(tmp, 0o755)
        api = config.new_client_from_config(str(cp.admin_kubeconfig))
        core = client.CoreV1Api(api)
        utils.create_from_yaml(api, str(REPO / "deploy" / "rbac.yaml"))
        kubeconfig = cp.identity("l3lb-agent", ["l3lb:agents"])
        core.create_namespace({"metadata": {"name": "bench"}})
        relay = ApiRelay(cp.state.apiserver_port, tmp)
        lab = Lab(core, relay, kubeconfig, Path(tmp), "bench", index=0)
        lab_prefix = "10.100.0.0/20"  # room for 1,000 and the fail-over streams
        try:
            for n in ("a", "b", "c"):
                node = lab.node(n, start=False, args=("--address-lifetime", "30", "--log-level", "info"))
                node.argv[node.argv.index("--prefix") + 1] = lab_prefix
                node.start()
            while not lease_holder(lab.core, lab.namespace):
                time.sleep(0.2)
            names = [f"svc-{i:04d}" for i in range(args.services)]
            t0 = time.monotonic()
            create(lab, names)
            created = time.monotonic() - t0
            while len(got := allocated(core, "bench")) < args.services:
                time.sleep(0.1)
            total = time.monotonic() - t0
            assert len(set(got.values())) == args.services, "duplicate IPs"
            print(f"{args.services} Services: created in {created:.1f}s, all allocated after {total:.1f}s")
            kill_gap, kill_takeover = failover_gap(lab, signal.SIGKILL, "kill")
            while not lease_holder(lab.core, lab.namespace):
                time.sleep(0.2)
            time.sleep(3)
            term_gap, term_takeover = failover_gap(lab, signal.SIGTERM, "term")
        finally:
            lab.close()
            relay.close()
    result = {
        "services": args.services,
        "create_s": round(created, 2),
        "allocate_all_s": round(total, 2),
        "failover_gap_sigkill_s": round(kill_gap, 2),
        "lease_takeover_sigkill_s": round(kill_takeover, 2),
        "failover_gap_sigterm_s": round(term_gap, 2),
        "lease_takeover_sigterm_s": round(term_takeover, 2),
        "lease": {"duration_s": 15, "renew_deadline_s": 10, "retry_period_s": 2},
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
