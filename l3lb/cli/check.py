"""``l3lb check``: one line per check of what the agent depends on, each failure with a concrete fix.

``fail`` means the agent cannot do its job; ``warn`` means it works with less (for example it announces but
cannot publish status); ``skip`` means the check could not run because an earlier one failed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from ..config import Config, Network
from ..ipam.pools import fingerprint
from ..k8s import permissions
from ..k8s.api import Api, api_message, pages, path
from ..k8s.leader import LEASE, LEASE_NAME, pools_fingerprint
from . import traps
from .frr import Vtysh, check_config

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

RBAC_FIX = (
    "apply deploy/rbac.yaml and bind the agent's identity "
    "(group l3lb:agents or ServiceAccount kube-system/l3lb)"
)


@dataclass
class Result:
    check: str
    status: str
    message: str
    fix: str = ""


class Checks:
    def __init__(
        self,
        api: Api,
        config: Config,
        vtysh: Vtysh,
        *,
        lease_namespace: str = "kube-system",
        proc: str = "/proc",
    ) -> None:
        self.api = api
        self.lease_namespace = lease_namespace
        self.config = config
        self.vtysh = vtysh
        self.proc = proc
        self.api_ok = False
        self.node: dict[str, Any] | None = None

    def run(self) -> list[Result]:
        return [r for check in self.checks() for r in check()]

    def checks(self) -> list[Callable[[], Iterator[Result]]]:
        return [
            self.check_api,
            self.check_permissions,
            self.check_node,
            self.check_prefixes,
            self.check_pools,
            self.check_interface,
            self.check_netlink,
            self.check_frr,
            self.check_other_lbs,
            self.check_takeover,
            self.check_arp,
        ]

    def check_api(self) -> Iterator[Result]:
        try:
            version = self.api.get_json("/version", timeout=(5, 10))
        except Exception as err:
            yield Result(
                "api",
                FAIL,
                f"cannot reach the apiserver at {self.api.client.configuration.host}: {_short(err)}",
                "check --kubeconfig (or $KUBECONFIG) and that the apiserver is up",
            )
            return
        self.api_ok = True
        yield Result("api", OK, f"{version.get('gitVersion')} at {self.api.client.configuration.host}")

    def check_permissions(self) -> Iterator[Result]:
        if not self.api_ok:
            yield Result("permissions", SKIP, "no API connection")
            return
        try:
            results = permissions.check(self.api, self.lease_namespace)
        except ApiException as err:
            yield Result("permissions", FAIL, f"cannot ask what it may do: {api_message(err)}", RBAC_FIX)
            return
        for p, allowed in results:
            name = p.describe(self.lease_namespace)
            if allowed:
                yield Result("permissions", OK, f"may {name}")
            elif p.purpose == permissions.WATCH:
                yield Result("permissions", FAIL, f"may not {name}: the agent cannot watch it", RBAC_FIX)
            else:
                what = {
                    permissions.STATUS: "allocate (write status)",
                    permissions.ELECT: "allocate (lead the election)",
                }.get(p.purpose, "write Events")
                yield Result(
                    "permissions", WARN, f"may not {name}: the agent announces but cannot {what}", RBAC_FIX
                )

    def check_node(self) -> Iterator[Result]:
        if not self.api_ok:
            yield Result("node", SKIP, "no API connection")
            return
        name = self.config.node_name
        try:
            items = self.api.get_json("/api/v1/nodes", query={"fieldSelector": f"metadata.name={name}"})[
                "items"
            ]
        except ApiException as err:
            yield Result("node", FAIL, f"cannot read Node {name}: {api_message(err)}", RBAC_FIX)
            return
        if not items:
            yield Result(
                "node",
                FAIL,
                f"no Node named {name!r}: this node would announce nothing",
                "pass --node-name (or $NODE_NAME) exactly as `kubectl get nodes` shows it; "
                "k3s uses the lowercase hostname or services.k3s.nodeName",
            )
            return
        self.node = items[0]
        yield Result("node", OK, f"Node {name} exists")

    def check_prefixes(self) -> Iterator[Result]:
        """The prefixes must not overlap the node, pod or service networks where those are known."""
        known: list[tuple[str, Network]] = []
        for node in self._all_nodes():
            for cidr in (node.get("spec") or {}).get("podCIDRs") or []:
                known.append(
                    (f"pod CIDR of {node['metadata']['name']}", ipaddress.ip_network(cidr, strict=False))
                )
            for addr in (node.get("status") or {}).get("addresses") or []:
                if addr.get("type") in ("InternalIP", "ExternalIP"):
                    known.append(
                        (f"address of node {node['metadata']['name']}", ipaddress.ip_network(addr["address"]))
                    )
        for ip in self._kubernetes_service_ips():
            known.append(("the service network (Service default/kubernetes)", ipaddress.ip_network(ip)))
        clashes = [
            (what, net, p)
            for what, net in known
            for p in self.config.prefixes
            if net.version == p.version and net.overlaps(p)
        ]
        for what, net, p in clashes:
            yield Result(
                "prefixes",
                FAIL,
                f"prefix {p} overlaps {what} ({net})",
                "choose --prefix from address space the cluster and the nodes do not use",
            )
        if not clashes:
            yield Result(
                "prefixes",
                OK,
                f"{', '.join(map(str, self.config.prefixes))} overlap no known node, pod "
                f"or service network ({len(known)} checked)",
            )

    def _all_nodes(self) -> list[dict[str, Any]]:
        if not self.api_ok:
            return []
        try:
            return self.api.get_json("/api/v1/nodes").get("items") or []
        except ApiException:
            return [self.node] if self.node else []

    def _kubernetes_service_ips(self) -> list[str]:
        if not self.api_ok:
            return []
        try:  # a list, not a get: the agent's identity may list Services (l3lb/k8s/permissions.py)
            found = self.api.get_json(
                "/api/v1/namespaces/default/services", query={"fieldSelector": "metadata.name=kubernetes"}
            ).get("items")
        except ApiException:
            return []
        return [ip for svc in found or [] for ip in (svc.get("spec") or {}).get("clusterIPs") or []]

    def check_interface(self) -> Iterator[Result]:
        from ..netlink.tables import InterfaceMissing, NetlinkTable

        try:
            table = NetlinkTable(self.config.interface)
        except InterfaceMissing:
            yield Result(
                "interface",
                FAIL,
                f"interface {self.config.interface!r} does not exist",
                "pass --interface with an existing interface (lo by default)",
            )
            return
        except OSError as err:
            yield Result(
                "interface", FAIL, f"cannot open netlink: {err}", "run l3lb where it can use netlink"
            )
            return
        held = [ip for ip in table.dump() if self.config.in_prefix(ip)]
        table.close()
        yield Result(
            "interface", OK, f"{self.config.interface} exists and holds {len(held)} of our addresses"
        )

    def check_netlink(self) -> Iterator[Result]:
        cap_net_admin = 12
        for line in Path(f"{self.proc}/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                if int(line.split()[1], 16) >> cap_net_admin & 1:
                    yield Result("netlink", OK, "CAP_NET_ADMIN: addresses can be changed")
                else:
                    yield Result(
                        "netlink",
                        FAIL,
                        "no CAP_NET_ADMIN: the agent cannot change addresses",
                        "run as root or with AmbientCapabilities=CAP_NET_ADMIN (the NixOS module does)",
                    )
                return

    def check_frr(self) -> Iterator[Result]:
        if not self.vtysh.installed:
            yield Result(
                "frr",
                FAIL,
                "vtysh not found: FRR is not installed here",
                "install FRR with bgpd (NixOS: services.l3lb.frr.enable)",
            )
            return
        if self.vtysh.run("show version") is None:
            yield Result(
                "frr",
                FAIL,
                "FRR does not answer on its vty socket",
                "start FRR (systemctl start frr) or pass --vty-socket",
            )
            return
        peers = self.vtysh.established_peers()
        if peers is None:
            yield Result("frr", FAIL, "bgpd is not running", "enable bgpd (NixOS: services.frr.bgpd.enable)")
            return
        yield Result(
            "frr",
            OK if peers else WARN,
            f"bgpd runs with {peers} established BGP session(s)",
            "" if peers else "check the BGP sessions to the upstream routers",
        )
        running = self.vtysh.run("show running-config") or ""
        missing = check_config(
            running, self.config.prefixes, self.config.class_interfaces, self.config.drain_interface
        )
        for item in missing:
            yield Result(
                "frr",
                FAIL,
                f"running config lacks {item}",
                "add l3lb's FRR snippet (NixOS: services.l3lb.frr.enable = true; see nixos/frr.nix)",
            )
        for certain, leak in traps.redistribution_leaks(running, self.config.prefixes):
            yield Result("frr", FAIL if certain else WARN, leak, traps.LEAK_FIX)
        if not missing:
            weights = (
                f", every one of {self.config.weight_classes} weight classes"
                if self.config.weight_classes
                else ""
            ) + (", the drain" if self.config.drain_seconds else "")
            yield Result(
                "frr", OK, f"prefix-list, route-map and redistribute connected cover every prefix{weights}"
            )

    def check_other_lbs(self) -> Iterator[Result]:
        if not self.api_ok:
            yield Result("other-lb", SKIP, "no API connection")
            return
        found = False
        try:
            self.api.get_json("/apis/metallb.io")
            found = True
            yield Result(
                "other-lb",
                FAIL,
                "MetalLB is installed (API group metallb.io): it would announce the same Services",
                "uninstall MetalLB, or give our Services a loadBalancerClass and run "
                "l3lb with --no-default-class",
            )
        except ApiException:
            pass
        try:  # ServiceLB's DaemonSets (svclb-<service>-<uid>), labelled by k3s' servicelb.go
            daemonsets = self.api.get_json(
                "/apis/apps/v1/daemonsets", query={"labelSelector": "svccontroller.k3s.cattle.io/svcname"}
            )
            names = [_ns_name(d) for d in daemonsets.get("items") or []]
        except ApiException:
            names = []
        if names:
            yield Result(
                "other-lb",
                FAIL,
                f"k3s ServiceLB is enabled: its DaemonSets {', '.join(sorted(names)[:3])}"
                + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                + " take the Services' ports on every node and write their status",
                "start k3s with --disable=servicelb (NixOS: services.l3lb.disableServiceLB); k3s then "
                "deletes the DaemonSets",
            )
            return
        try:
            pods = self.api.get_json(
                "/api/v1/pods", query={"labelSelector": "svccontroller.k3s.cattle.io/svcname"}
            )
        except ApiException as err:
            yield Result(
                "other-lb",
                WARN,
                f"cannot look for k3s ServiceLB pods: {api_message(err)}",
                "run `kubectl get pods -A | grep svclb-` yourself",
            )
            return
        svclb = [p["metadata"]["name"] for p in pods.get("items") or []]
        if svclb:
            found = True
            yield Result(
                "other-lb",
                FAIL,
                f"k3s ServiceLB is active ({', '.join(sorted(svclb)[:3])}...)",
                "start k3s with --disable=servicelb (NixOS: services.l3lb.disableServiceLB)",
            )
        if not found:
            yield Result("other-lb", OK, "no MetalLB, no k3s ServiceLB pods")

    def check_takeover(self) -> Iterator[Result]:
        """Services of ours: another controller still writing their status, IPs the allocator would
        change, and the other projects' annotations that l3lb reads otherwise (l3lb/cli/traps.py)."""
        if not self.api_ok:
            yield Result("takeover", SKIP, "no API connection")
            return
        try:
            objects = [
                o
                for page in pages(self.api, "/api/v1/services", {"fieldSelector": "spec.type=LoadBalancer"})
                for o in page.get("items") or []
            ]
        except ApiException as err:
            yield Result("takeover", WARN, f"cannot list Services: {api_message(err)}", RBAC_FIX)
            return
        for check, status, message, fix in traps.takeover(objects, self.config, self.lease_namespace):
            yield Result(check, status, message, fix)

    def check_pools(self) -> Iterator[Result]:
        """This agent's pools against the elected allocator's (the fingerprint on its Lease)."""
        if not self.api_ok:
            yield Result("pools", SKIP, "no API connection")
            return
        mine = fingerprint(self.config.pools)
        names = ", ".join(p.name for p in self.config.pools)
        url = path(LEASE, ns=self.lease_namespace, name=LEASE_NAME)
        try:
            lease = self.api.get_json(url)
        except ApiException as err:
            if err.status == 404:
                yield Result("pools", OK, f"pools {names} ({mine}); no allocator elected yet to compare with")
            else:
                yield Result(
                    "pools",
                    WARN,
                    f"cannot read the allocator's Lease {self.lease_namespace}/{LEASE_NAME} to compare "
                    f"pools: {api_message(err)}",
                    RBAC_FIX,
                )
            return
        holder = (lease.get("spec") or {}).get("holderIdentity") or "nobody"
        theirs = pools_fingerprint(lease)
        if not theirs or theirs == mine:
            yield Result("pools", OK, f"pools {names} ({mine}), as the allocator's ({holder})")
            return
        yield Result(
            "pools",
            FAIL,
            f"pools {names} hash to {mine}, the elected allocator's ({holder}) to {theirs}: the agents "
            "disagree on which Service gets which IP and which node announces it",
            "give every agent the same --config file (or the same --prefix/--reserve); NixOS: the same "
            "services.l3lb.pools on every node",
        )

    def check_arp(self) -> Iterator[Result]:
        def read(name: str) -> int:
            return int(Path(f"{self.proc}/sys/net/ipv4/conf/all/{name}").read_text())

        ignore, announce = read("arp_ignore"), read("arp_announce")
        if ignore >= 1 and announce == 2:
            yield Result(
                "arp", OK, f"arp_ignore={ignore} arp_announce={announce}: IPs on lo never answer ARP"
            )
        else:
            yield Result(
                "arp",
                FAIL,
                f"arp_ignore={ignore} arp_announce={announce}: Service IPs on lo may answer ARP on a LAN",
                "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 "
                "(NixOS: services.l3lb.arpSysctls = true)",
            )


def _ns_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def render(results: list[Result]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.status:5s} {r.check:12s} {r.message}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':18s}fix: {r.fix}")
    return "\n".join(lines)


def as_json(results: list[Result]) -> list[dict[str, str]]:
    return [asdict(r) for r in results]


def failed(results: list[Result]) -> bool:
    return any(r.status == FAIL for r in results)
