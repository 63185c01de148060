"""Benchmark of the leader's conditions under endpoint churn: its status writes per second (the apiserver's
audit log) against the cap, and how long after the churn stops every Service's conditions are right.

Real control plane, one agent (the leader) in a network namespace under the least-privilege identity, the
Services, slices and nodes of bench/agent.py (a fifth of the Services Local, ten endpoints each on ten of
the nodes). After the first pass has written every Service's conditions, three phases of ``--seconds``
each, at ``--churn`` EndpointSlice writes a second in all:

- ``elsewhere``: bench/agent.py's rolling update on Cluster Services (one endpoint of ten not ready at a
  time): no condition text changes, so no write is due;
- ``changing``: as above, but ``--changing`` of the writes a second flip one of ``--flipped`` Local
  Services between all endpoints ready and none (its Announced condition goes True/False each time):
  more changes than the cap lets out, coalesced per Service;
- ``changing-all``: the same over every Local Service, so the backlog can reach one write per Local Service.

"Right" is what ``l3lb status --all`` computes from one list of everything with each node's own Tracker,
put in words by the same function as the condition's. Run as root::

    .venv/bin/python bench/conditions.py [--services 1000] [--nodes 100] [--churn 200] [--changing 40]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests" / "support"), str(REPO / "tests")]

from agent import (  # noqa: E402
    AGENT_USER,
    CHURN_WRITERS,
    NS,
    Layout,
    agent_metrics,
    churn,
    proc_stats,
    setup,
    worker_private,
    worker_rss,
)
from kubernetes import client, config, utils  # noqa: E402
from netns import ApiRelay, NetNS  # noqa: E402
from testenv import ControlPlane, interrupt_on_sigterm  # noqa: E402

from l3lb.cli.status import cluster  # noqa: E402
from l3lb.conditions.compose import ALLOCATED, ANNOUNCED, announced  # noqa: E402
from l3lb.config import Config, parse_prefixes  # noqa: E402
from l3lb.k8s.api import Api, pages  # noqa: E402
from l3lb.k8s.conditions import RATE  # noqa: E402
from l3lb.model import parse_service  # noqa: E402
from l3lb.node.cluster import Announcement  # noqa: E402

PREFIX = "10.100.0.0/16"


def flips(admin: str, layout: Layout, rate: float, stop: Any, done: Any, targets: list[int]) -> None:
    """Each write turns one of ``targets`` (Local Services) all ready or all not, in turn."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    disc = client.DiscoveryV1Api(config.new_client_from_config(admin))
    k, next_at = 0, time.monotonic()
    while not stop.is_set():
        i = targets[k % len(targets)]
        ready = (k // len(targets)) % 2 == 1
        endpoints = layout.endpoints(i)
        for ep in endpoints:
            ep["conditions"] = {"ready": ready, "serving": ready, "terminating": False}
        disc.patch_namespaced_endpoint_slice(f"svc-{i:05d}", NS, {"endpoints": endpoints})
        with done.get_lock():
            done.value += 1
        k += 1
        next_at += 1 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))


def status_writes(audit: Path, since: float, until: float) -> list[float]:
    """Wall-clock times of the agent's condition writes (patches of services/status under the conditions'
    field manager, not the allocator's) in [since, until], from the audit log."""
    out = []
    for line in audit.read_text().splitlines():
        e = json.loads(line)
        ref = e.get("objectRef") or {}
        if (
            e.get("stage") != "ResponseComplete"
            or e.get("user", {}).get("username") != AGENT_USER
            or e.get("verb") != "patch"
            or ref.get("resource") != "services"
            or ref.get("subresource") != "status"
            or "fieldManager=l3lb/kube-system/conditions" not in unquote(e.get("requestURI", ""))
        ):
            continue
        stamp = e["requestReceivedTimestamp"]
        t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        t += float("0." + stamp[20:-1] or "0")
        if since <= t <= until:
            out.append(t)
    return out


def per_second(times: list[float], since: float, until: float) -> list[int]:
    buckets = [0] * max(1, int(until - since) + 1)
    for t in times:
        buckets[int(t - since)] += 1
    return buckets


def expected(api: Api, cfg: Config) -> dict[str, tuple[str, str]]:
    """Per Service: (Announced status, message) as l3lb status --all decides it, from one list."""
    out = {}
    for row in cluster(api, cfg):
        nodes = [(n, "", True) for n in row.announced_by] + [(n, why, False) for n, why in row.not_by.items()]
        c = announced(parse_service({}), Announcement(tuple(sorted(nodes)), (), frozenset()))
        out[row.service.split("/")[1]] = (c.status, c.message)
    return out


def wrong(api: Api, layout: Layout, want: dict[str, tuple[str, str]]) -> list[str]:
    """The Services whose conditions are not what they should be."""
    bad = []
    for page in pages(api, f"/api/v1/namespaces/{NS}/services", {}):
        for obj in page.get("items") or []:
            name = obj["metadata"]["name"]
            got = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
            i = int(name.split("-")[1])
            alloc, ann = got.get(ALLOCATED) or {}, got.get(ANNOUNCED) or {}
            if (alloc.get("status"), alloc.get("message")) != (
                "True",
                f"{layout.ip(i)} from pool default",
            ) or (
                ann.get("status"),
                ann.get("message"),
            ) != want[name]:
                bad.append(name)
    return bad


def metric(ns: NetNS, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)} (\S+)$", agent_metrics(ns), re.M)
    return float(found[0]) if found else 0.0


def phase(
    name: str,
    admin: str,
    layout: Layout,
    ns: NetNS,
    pid: int,
    audit: Path,
    api: Api,
    cfg: Config,
    *,
    rate: float,
    changing: float,
    flipped: list[int],
    seconds: float,
) -> dict:
    stop, done = multiprocessing.Event(), multiprocessing.Value("L", 0)
    elsewhere = rate - changing
    procs = [
        multiprocessing.Process(target=churn, args=(admin, layout, elsewhere / CHURN_WRITERS, stop, done, k))
        for k in range(CHURN_WRITERS)
    ]
    if changing:
        procs.append(
            multiprocessing.Process(target=flips, args=(admin, layout, changing, stop, done, flipped))
        )
    _, _, cpu0 = proc_stats(pid)
    t0 = time.time()
    for p in procs:
        p.start()
    time.sleep(seconds)
    stop.set()
    for p in procs:
        p.join()
    t_stop = time.time()
    if any(p.exitcode for p in procs):
        raise RuntimeError("a churn writer failed (its traceback is above)")
    backlog_at_stop = metric(ns, "l3lb_condition_backlog")
    want = expected(api, cfg)
    while True:
        checked = time.time()
        bad = wrong(api, layout, want)
        if not bad:
            break
        if time.time() - t_stop > 120:
            raise RuntimeError(f"{len(bad)} Services still wrong 120 s after the churn: {bad[:5]}")
        time.sleep(0.2)
    _, _, cpu1 = proc_stats(pid)
    during = per_second(status_writes(audit, t0, t_stop), t0, t_stop)
    after = status_writes(audit, t_stop, checked)
    # Conditions change only by writes: with every one right at ``checked`` and none written after the
    # last write, every one was right from that write on.
    right_after = max(after, default=t_stop) - t_stop
    result = {
        "phase": name,
        "churn_writes_per_s": round(done.value / (t_stop - t0), 1),
        "changing_writes_per_s": changing,
        "flipped_services": len(flipped) if changing else 0,
        "status_writes_per_s_mean": round(sum(during) / len(during), 1),
        "status_writes_per_s_max": max(during),
        "cap_per_s": RATE,
        "backlog_at_stop": int(backlog_at_stop),
        "writes_after_stop": len(after),
        "all_correct_after_stop_s": round(right_after, 2),
        "checked_after_stop_s": round(checked - t_stop, 2),
        "agent_cpu_percent": round((cpu1 - cpu0) / (checked - t0) * 100, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--churn", type=float, default=200.0, help="EndpointSlice writes a second, in all")
    ap.add_argument("--changing", type=float, default=40.0, help="of which flip a Local Service's condition")
    ap.add_argument("--flipped", type=int, default=50, help="Local Services flipped in the changing phase")
    ap.add_argument("--seconds", type=float, default=30.0, help="churn per phase")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "conditions.json")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if os.geteuid() != 0:
        print("bench/conditions.py needs root (network namespaces)", file=sys.stderr)
        return 2
    layout = Layout(args.services, args.nodes)
    local = [i for i in range(args.services) if layout.local(i)]
    cfg = Config(prefixes=parse_prefixes([PREFIX]), node_name="n00")
    with (
        tempfile.TemporaryDirectory(prefix="l3lb-bench-") as tmp,
        ControlPlane(Path(tmp) / "cp", audit=(AGENT_USER,)) as cp,
    ):
        admin_client = config.new_client_from_config(str(cp.admin_kubeconfig))
        core, disc = client.CoreV1Api(admin_client), client.DiscoveryV1Api(admin_client)
        api = Api(admin_client)
        utils.create_from_yaml(admin_client, str(REPO / "deploy" / "rbac.yaml"))
        kubeconfig = cp.identity(AGENT_USER, ["l3lb:agents"])
        setup(core, disc, layout)
        print(f"  setup: {args.services} Services on {args.nodes} nodes", flush=True)
        relay = ApiRelay(cp.state.apiserver_port, tmp)
        try:
            with NetNS(tmp) as ns:
                relay.attach(ns)
                argv = [sys.executable, "-m", "l3lb", "run", "--prefix", PREFIX, "--node-name", "n00"]
                agent = ns.popen([*argv, "--kubeconfig", str(kubeconfig)], "agent")
                t0 = time.time()
                want = None
                while True:  # the first pass: every Service's conditions written
                    time.sleep(2)
                    if (
                        metric(ns, "l3lb_condition_backlog") == 0
                        and metric(ns, 'l3lb_condition_writes_total{outcome="written"}') >= args.services
                    ):
                        want = want or expected(api, cfg)
                        if not wrong(api, layout, want):
                            break
                    if time.time() - t0 > 600:
                        raise RuntimeError("the first pass did not finish in 600 s")
                writes = status_writes(cp.audit_log, t0, time.time())
                first = {
                    "first_pass_s": round(max(writes) - t0, 1),
                    "first_pass_writes": len(writes),
                    "first_pass_writes_per_s_max": max(per_second(writes, t0, max(writes))),
                    "first_pass_conflicts": metric(ns, 'l3lb_condition_writes_total{outcome="conflict"}'),
                }
                print(json.dumps(first), flush=True)
                common = dict(seconds=args.seconds, rate=args.churn)
                phases = [
                    phase(
                        "elsewhere",
                        str(cp.admin_kubeconfig),
                        layout,
                        ns,
                        agent.pid,
                        cp.audit_log,
                        api,
                        cfg,
                        changing=0.0,
                        flipped=[],
                        **common,
                    ),
                    phase(
                        "changing",
                        str(cp.admin_kubeconfig),
                        layout,
                        ns,
                        agent.pid,
                        cp.audit_log,
                        api,
                        cfg,
                        changing=args.changing,
                        flipped=local[: args.flipped],
                        **common,
                    ),
                    phase(
                        "changing-all",
                        str(cp.admin_kubeconfig),
                        layout,
                        ns,
                        agent.pid,
                        cp.audit_log,
                        api,
                        cfg,
                        changing=args.changing,
                        flipped=local,
                        **common,
                    ),
                ]
                rss, rss_worker = proc_stats(agent.pid)[0], worker_rss(agent.pid)
                private_worker = worker_private(agent.pid)
                ns.stop(agent)
        finally:
            relay.close()
    out = {
        "services": args.services,
        "nodes": args.nodes,
        **first,
        "agent_rss_mib": round(rss, 1),
        "worker_rss_mib": round(rss_worker, 1),
        "worker_private_mib": round(private_worker, 1),
        "phases": phases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
