"""``l3lb import``: MetalLB, Cilium and PureLB pools as l3lb's. The inputs are our own, written from the
projects' CRD fields (api/v1beta1 of MetalLB, CiliumLoadBalancerIPPool v2/v2alpha1, PureLB ServiceGroup
v1/v2) to cover what the projects' sample manifests exercise; their samples themselves are not kept in
this repository. Round trips: the YAML through the agent's parser and a real ``l3lb run --config``; the
Nix through nixos/pools.nix and the module's evaluation."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubelet import wait_for
from kubernetes import client
from lab import nix_eval
from testenv import ControlPlane

from l3lb.ipam import importer
from l3lb.ipam.pools import load, parse

METALLB = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan, namespace: metallb-system, labels: {bgp: "yes"}}
spec:
  addresses: [198.51.100.0/25, 198.51.100.200-198.51.100.204, "2001:db8:5::/120"]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: tenants, namespace: metallb-system}
spec:
  addresses: [203.0.112.0/23]
  avoidBuggyIPs: true
  autoAssign: false
  serviceAllocation:
    priority: 5
    namespaces: [team-a]
    namespaceSelectors: [{matchLabels: {tier: gold}}]
    serviceSelectors: [{matchExpressions: [{key: app, operator: In, values: [web]}]}]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: spare, namespace: metallb-system}
spec:
  addresses: [192.0.2.64/27]
  serviceAllocation:
    serviceSelectors: [{matchLabels: {a: b}}, {matchLabels: {c: d}}]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: edge, namespace: metallb-system}
spec:
  ipAddressPoolSelectors: [{matchLabels: {bgp: "yes"}}]
  communities: [65000:100, large:65000:1:2, NO_ADVERTISE, BLUE, large:1:x:2]
  localPref: 150
  aggregationLength: 32
  peers: [upstream]
  nodeSelectors:
  - matchLabels: {kubernetes.io/hostname: node-1}
  - matchLabels: {kubernetes.io/hostname: node-2}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: tenants, namespace: metallb-system}
spec:
  ipAddressPools: [tenants, missing]
  aggregationLength: 24
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: aliases, namespace: metallb-system}
spec:
  communities:
  - {name: NO_ADVERTISE, value: "65535:65282"}
  - {name: BLUE, value: "65000:200"}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2, namespace: metallb-system}
spec: {ipAddressPools: [spare]}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: upstream, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64513, peerAddress: 192.0.2.1}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b, labels: {tier: gold}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-c, labels: {tier: silver}}
"""

CILIUM = """
apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {name: blue, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  blocks:
  - cidr: 10.20.0.0/24
  - cidr: "2001:db8:20::/64"
  - {start: 10.21.0.10, stop: 10.21.0.13}
  - {start: 10.22.0.7}
  allowFirstLastIPs: "No"
  serviceSelector:
    matchLabels: {color: blue, io.kubernetes.service.namespace: tenant-a}
    matchExpressions: [{key: io.kubernetes.service.name, operator: In, values: [web]}]
---
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {name: red, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  cidrs: [{cidr: 10.20.0.0/25}, {cidr: 10.23.0.0/24}]
  disabled: true
  serviceSelector:
    matchExpressions:
    - {key: io.kubernetes.service.namespace, operator: NotIn, values: [kube-system]}
    - {key: color, operator: Exists}
"""

PURELB = """
apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: default, namespace: purelb-system}
spec:
  local:
    v4pools:
    - {subnet: 192.168.254.0/24, pool: 192.168.254.230/32, aggregation: default}
    - {subnet: 192.168.254.0/24, pool: 192.168.254.231-192.168.254.240, aggregation: default}
    v6pools:
    - {subnet: "fd53:9ef0:8683::/120", pool: "fd53:9ef0:8683::-fd53:9ef0:8683::3", aggregation: default}
---
apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: routed, namespace: purelb-system}
spec:
  remote:
    v4pool: {subnet: 172.31.0.0/24, pool: 172.31.0.1-172.31.0.100, aggregation: /32}
    v6pool: {subnet: "fd00:2::/112", pool: "fd00:2::1-fd00:2::64", aggregation: /128}
---
apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: tenant-a, namespace: purelb-system}
spec:
  namespaces: [tenant-a]
  remote:
    multiPool: true
    v4pools: [{subnet: 172.30.0.0/24, pool: 172.30.0.0/28, aggregation: /32}]
---
apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: ipam, namespace: purelb-system}
spec:
  external: {provider: netbox, socket: /var/run/purelb/ipam.sock, announce: remote}
---
apiVersion: purelb.io/v1
kind: ServiceGroup
metadata: {name: old, namespace: purelb-system}
spec:
  local: {subnet: 10.40.0.0/24, pool: 10.40.0.8/29, aggregation: default}
---
apiVersion: purelb.io/v2
kind: LBNodeAgent
metadata: {name: default, namespace: purelb-system}
spec: {local: {localInterface: default}}
"""


def imported(text: str) -> importer.Imported:
    return importer.convert(
        [dict(o, _source="test.yaml") for o in importer._flatten(yaml.safe_load_all(text))]
    )


def pools_by_name(result: importer.Imported) -> dict[str, importer.Pool]:
    return {p.name: p for p in result.pools}


def notes(pool: importer.Pool, start: str) -> list[str]:
    return [n for n in pool.notes if n.startswith(start)]


def test_metallb_pools_and_their_advertisements() -> None:
    result = imported(METALLB)
    assert [p.name for p in result.pools] == ["tenants", "lan", "spare"], "by priority, unset last"
    got = pools_by_name(result)
    lan, tenants, spare = got["lan"], got["tenants"], got["spare"]
    assert [str(n) for n in lan.prefixes] == [
        "198.51.100.0/25",
        "198.51.100.200/30",
        "198.51.100.204/32",
        "2001:db8:5::/120",
    ]
    assert (
        "198.51.100.200, 198.51.100.203 are for requests only"
        in notes(lan, "spec.addresses 198.51.100.200-")[1]
    )
    assert lan.node_selector == {
        "matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1", "node-2"]}
        ]
    }, "two one-label selectors on the same key are one In"
    assert lan.communities == ["65000:100", "65000:200"] and lan.large_communities == ["65000:1:2"]
    (refused,) = notes(lan, "communities 65535:65282 (alias NO_ADVERTISE)")
    assert "no-advertise" in refused and "the module refuses it" in refused
    assert notes(lan, "localPref 150") and notes(lan, "peers upstream")
    assert notes(lan, "communities 'large:1:x:2' (BGPAdvertisement metallb-system/edge): not a community")
    assert not notes(lan, "aggregationLength"), "32 is l3lb's own"

    assert tenants.auto_assign is False and tenants.namespaces == ["team-a", "team-b"]
    assert "resolved at import to team-b" in notes(tenants, "serviceAllocation.namespaceSelectors")[0]
    assert tenants.service_selector == {
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]
    }
    assert [str(r) for r in tenants.reserved] == ["203.0.112.255/32", "203.0.113.0/32"], "avoidBuggyIPs"
    assert notes(tenants, "aggregationLength 24")

    assert spare.service_selector is None and notes(spare, "serviceAllocation.serviceSelectors (a in (b)) or")
    assert notes(spare, "L2Advertisement metallb-system/l2")
    assert any("names missing" in n for n in result.notes)
    assert any(n.startswith("MetalLB BGPPeer metallb-system/upstream") for n in result.notes)
    importer.check(result)


def test_cilium_pools() -> None:
    result = imported(CILIUM)
    blue, red = result.pools
    assert [str(n) for n in blue.prefixes] == [
        "10.20.0.0/24",
        "2001:db8:20::/64",
        "10.21.0.10/31",
        "10.21.0.12/31",
        "10.22.0.7/32",
    ]
    assert [str(r) for r in blue.reserved] == ["2001:db8:20:0:ffff:ffff:ffff:ffff/128"], (
        "allowFirstLastIPs: No"
    )
    assert blue.namespaces == ["tenant-a"] and blue.service_selector == {"matchLabels": {"color": "blue"}}
    assert notes(blue, "spec.serviceSelector io.kubernetes.service.name in (web)")
    assert [str(n) for n in red.prefixes] == ["10.23.0.0/24"], "the overlapping block is left out"
    assert notes(red, "10.20.0.0/25 overlaps 10.20.0.0/24 of blue")
    assert red.auto_assign is False and notes(red, "spec.disabled")
    assert notes(red, "spec.cidrs") and red.service_selector == {
        "matchExpressions": [{"key": "color", "operator": "Exists"}]
    }
    assert notes(red, "spec.serviceSelector !io.kubernetes.service.namespace") == [] and notes(
        red, "spec.serviceSelector io.kubernetes.service.namespace notin (kube-system)"
    ), "a NotIn on the namespace with no Namespaces known: said, left out"
    importer.check(result)


def test_purelb_service_groups() -> None:
    result = imported(PURELB)
    assert [p.name for p in result.pools] == ["tenant-a", "old", "routed", "default"]
    got = pools_by_name(result)
    assert [str(n) for n in got["default"].prefixes] == [
        "192.168.254.230/32",
        "192.168.254.231/32",
        "192.168.254.232/29",
        "192.168.254.240/32",
        "fd53:9ef0:8683::/126",
    ]
    assert got["default"].auto_assign and notes(got["default"], "spec.local:")
    assert notes(got["default"], "spec.local.v4pools[0].aggregation default")
    assert got["routed"].auto_assign is False and not notes(got["routed"], "spec.remote.v4pool.aggregation")
    assert got["tenant-a"].namespaces == ["tenant-a"] and got["tenant-a"].auto_assign
    assert notes(got["tenant-a"], "spec.remote.multiPool") and notes(got["tenant-a"], "spec.namespaces")
    assert [str(n) for n in got["old"].prefixes] == ["10.40.0.8/29"]
    assert "(v1)" in notes(got["old"], "spec.local:")[0]
    assert any("spec.external" in n for n in result.notes) and "ipam" not in got
    assert any(n.startswith("PureLB LBNodeAgent") for n in result.notes)
    importer.check(result)


def test_the_yaml_is_the_agents_config_file(tmp_path: Path) -> None:
    for text in (METALLB, CILIUM, PURELB, METALLB + "---" + CILIUM + "---" + PURELB):
        result = imported(text)
        path = tmp_path / "pools.yaml"
        path.write_text(importer.to_yaml(result))
        pools = load(path)
        assert [p.name for p in pools] == [p.name for p in result.pools]
        assert [[str(n) for n in p.prefixes] for p in pools] == [
            [str(n) for n in p.prefixes] for p in result.pools
        ]
        for note in (n for p in result.pools for n in p.notes):
            assert f"# - {note}" in path.read_text(), "every note printed"


@pytest.mark.nix
def test_the_nix_is_the_same_pools() -> None:
    """Through the module's own renderer (nixos/pools.nix) back to the agent's parser: the same pools, in
    the same order (priority)."""
    for text in (METALLB, CILIUM, PURELB):
        result = imported(text)
        nix = importer.to_nix(result)
        rendered = nix_eval(f"(import ./nixos/pools.nix {{ pools = {nix}; }}).json")
        assert parse(json.loads(rendered)) == parse(importer.config_doc(result))
        ordered = nix_eval(
            f"map (p: p.bgp.communities or [ ]) (import ./nixos/pools.nix {{ pools = {nix}; }}).ordered"
        )
        assert ordered == [p.communities for p in result.pools]


@pytest.mark.nixpkgs_lib
def test_the_nix_is_accepted_by_the_module() -> None:
    from lab import eval_module

    for text in (METALLB, CILIUM, PURELB):
        nix = importer.to_nix(imported(text))
        got = eval_module(
            "{ services.k3s.enable = true; services.l3lb = { enable = true; "
            f"pools = {nix}; frr = {{ enable = true; asn = 65101; }}; }}; }}"
        )
        assert got["failedAssertions"] == [], got["failedAssertions"]
    got = eval_module(
        "{ services.k3s.enable = true; services.l3lb = { enable = true; "
        f"pools = {importer.to_nix(imported(METALLB))}; frr = {{ enable = true; asn = 65101; }}; }}; }}"
    )
    assert " set community 65000:100 65000:200\n set large-community 65000:1:2\n" in got["frrConfig"]


def test_the_command_line_from_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(METALLB)
    (tmp_path / "b.yaml").write_text(PURELB)
    run = [
        sys.executable,
        "-m",
        "l3lb",
        "import",
        "-f",
        str(tmp_path / "a.yaml"),
        "-f",
        str(tmp_path / "b.yaml"),
    ]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"# Imported by `l3lb import` from {tmp_path / 'a.yaml'}, {tmp_path / 'b.yaml'}.")
    (tmp_path / "pools.yaml").write_text(out)
    assert len(load(tmp_path / "pools.yaml")) == 7
    nix = subprocess.run([*run, "-o", "nix"], capture_output=True, text=True, check=True).stdout
    assert '  "lan" = {' in nix and nix.endswith("}\n")
    (tmp_path / "none.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    bad = subprocess.run([*run[:4], "-f", str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert bad.returncode == 1 and "no pools found to import" in bad.stderr
    assert "not load-balancer configuration, ignored: ConfigMap x" in bad.stdout


# ---- from the cluster: minimal CRDs of our own


def crd(group: str, kind: str, plural: str, versions: list[str], scope: str = "Namespaced") -> dict[str, Any]:
    """A CustomResourceDefinition that accepts any spec (apiextensions.k8s.io/v1), enough to store the
    projects' objects on the test control plane."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": i == 0,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
                for i, v in enumerate(versions)
            ],
        },
    }


CRDS = [
    crd("metallb.io", "IPAddressPool", "ipaddresspools", ["v1beta1"]),
    crd("metallb.io", "BGPAdvertisement", "bgpadvertisements", ["v1beta1"]),
    crd("metallb.io", "L2Advertisement", "l2advertisements", ["v1beta1"]),
    crd("metallb.io", "Community", "communities", ["v1beta1"]),
    crd("cilium.io", "CiliumLoadBalancerIPPool", "ciliumloadbalancerippools", ["v2", "v2alpha1"], "Cluster"),
    crd("purelb.io", "ServiceGroup", "servicegroups", ["v2"]),
]


@pytest.mark.root
@pytest.mark.cluster
def test_the_command_line_from_the_cluster(
    control_plane: ControlPlane, api: client.ApiClient, tmp_path: Path
) -> None:
    ext = client.ApiextensionsV1Api(api)
    core = client.CoreV1Api(api)
    made: list[str] = []
    namespaces = ["metallb-system", "purelb-system", "team-b", "team-c"]
    try:
        for c in CRDS:
            ext.create_custom_resource_definition(c)
            made.append(c["metadata"]["name"])
        for name in made:
            wait_for(
                lambda n=name: any(
                    x.type == "Established" and x.status == "True"
                    for x in ext.read_custom_resource_definition(n).status.conditions or []
                ),
                what=f"CRD {name} established",
            )
        for ns in namespaces:
            labels = {"tier": "gold"} if ns == "team-b" else {}
            core.create_namespace({"metadata": {"name": ns, "labels": labels}})
        custom = client.CustomObjectsApi(api)
        objects = [
            o
            for text in (METALLB, CILIUM, PURELB)
            for o in yaml.safe_load_all(text)
            if o["kind"] in {c["spec"]["names"]["kind"] for c in CRDS}
            and o["apiVersion"].split("/")[1] != "v1"
        ]
        for o in objects:
            group, version = o["apiVersion"].split("/")
            plural = {c["spec"]["names"]["kind"]: c["spec"]["names"]["plural"] for c in CRDS}[o["kind"]]
            body = {k: v for k, v in o.items()}
            body["metadata"] = {k: v for k, v in o["metadata"].items() if k != "creationTimestamp"}
            if "namespace" in o["metadata"]:
                custom.create_namespaced_custom_object(
                    group, version, o["metadata"]["namespace"], plural, body
                )
            else:
                custom.create_cluster_custom_object(group, version, plural, body)
        argv = [sys.executable, "-m", "l3lb", "import", "--kubeconfig", str(control_plane.admin_kubeconfig)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        (tmp_path / "pools.yaml").write_text(out)
        pools = {p.name: p for p in load(tmp_path / "pools.yaml")}
        assert set(pools) == {"tenants", "lan", "spare", "blue", "red", "default", "routed", "tenant-a"}
        assert pools["tenants"].namespaces == {"team-a", "team-b"}, (
            "the cluster's Namespaces resolve selectors"
        )
        assert "# Imported by `l3lb import` from the cluster." in out
        assert "spec.serviceSelector io.kubernetes.service.namespace" not in out or "resolved" in out
    finally:
        for name in made:
            ext.delete_custom_resource_definition(name)
        for ns in namespaces:
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(ns)


@pytest.mark.root
@pytest.mark.cluster
def test_the_agent_runs_with_the_imported_file(control_plane: ControlPlane, tmp_path: Path) -> None:
    """The real ``l3lb run --config`` takes the printed file and reaches its initial sync."""
    path = tmp_path / "pools.yaml"
    path.write_text(importer.to_yaml(imported(METALLB + "---" + CILIUM + "---" + PURELB)))
    argv = [
        sys.executable,
        "-m",
        "l3lb",
        "run",
        "--config",
        str(path),
        "--dry-run",
        "--metrics-address",
        "off",
        "--kubeconfig",
        str(control_plane.admin_kubeconfig),
        "--node-name",
        "import-test",
        "--no-default-class",
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while proc.stderr and (line := proc.stderr.readline()):
            lines.append(line)
            if "initial sync done" in line:
                break
        assert any("initial sync done" in x for x in lines), "".join(lines)
        assert any(" pools=tenants:203.0.112.0/23 lan:" in x for x in lines), "in the order printed"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
