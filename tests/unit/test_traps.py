"""The traps ``l3lb check`` looks for when a cluster moves to l3lb (l3lb/cli/traps.py), on API objects and FRR
running configurations written here; tests/lab/test_inspect.py runs the same against the real control plane
and a real FRR."""

from __future__ import annotations

from typing import Any

from l3lb.cli import traps
from l3lb.config import Config, parse_prefixes

PREFIXES = parse_prefixes(["10.0.100.0/24", "fd00:100::/64"])
CONFIG = Config(prefixes=PREFIXES, node_name="n1")

# As FRR 8.4 prints `show running-config` for the module's snippet (nixos/frr.nix) and a BGP session.
RUNNING = """Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults datacenter
hostname node1
!
router bgp 65101
 bgp router-id 10.255.0.101
 neighbor eth-r interface remote-as external
 !
 address-family ipv4 unicast
  redistribute connected route-map L3LB-V4
 exit-address-family
 !
 address-family ipv6 unicast
  redistribute connected route-map L3LB-V6
  neighbor eth-r activate
 exit-address-family
exit
!
ip prefix-list L3LB-V4 seq 10 permit 10.0.100.0/24 ge 32
!
ipv6 prefix-list L3LB-V6 seq 10 permit fd00:100::/64 ge 128
!
route-map L3LB-V4 permit 10
 match ip address prefix-list L3LB-V4
exit
!
route-map L3LB-V6 permit 10
 match ipv6 address prefix-list L3LB-V6
exit
!
end
"""


def leaks(running: str) -> list[tuple[bool, str]]:
    return traps.redistribution_leaks(running, PREFIXES)


def test_the_modules_snippet_lets_out_nothing_else() -> None:
    assert leaks(RUNNING) == []


def test_redistribute_connected_without_a_route_map() -> None:
    running = RUNNING.replace("  redistribute connected route-map L3LB-V4\n", "  redistribute connected\n")
    assert leaks(running) == [
        (
            True,
            "'redistribute connected' under address-family ipv4 unicast has no route-map: every connected "
            "route goes out, not only l3lb's",
        )
    ]


def test_a_route_map_that_permits_more() -> None:
    wider = RUNNING.replace(
        "route-map L3LB-V4 permit 10\n",
        "ip prefix-list VIPS seq 5 permit 10.0.0.0/8 ge 32\n!\n"
        "route-map L3LB-V4 deny 3\n match ip address prefix-list L3LB-V4\nexit\n!\n"
        "route-map L3LB-V4 permit 5\n match ip address prefix-list VIPS\nexit\n!\n"
        "route-map L3LB-V4 permit 7\n match interface eth0\nexit\n!\n"
        "route-map L3LB-V4 permit 9\n match tag 7\nexit\n!\n"
        "route-map L3LB-V4 permit 10\n",
    )
    assert [leak for leak in leaks(wider)] == [
        (
            True,
            "'redistribute connected' under address-family ipv4 unicast through route-map L3LB-V4: entry 5 "
            "matches prefix-list VIPS, which permits 10.0.0.0/8, outside l3lb's prefixes",
        ),
        (
            True,
            "'redistribute connected' under address-family ipv4 unicast through route-map L3LB-V4: entry 7 "
            "permits every connected route on eth0, not only l3lb's prefixes",
        ),
        (
            False,
            "'redistribute connected' under address-family ipv4 unicast through route-map L3LB-V4: entry 9 "
            "matches 'tag 7' and no prefix-list: it may let out more than l3lb's prefixes",
        ),
    ]


def test_what_lets_out_nothing() -> None:
    # a route-map or prefix-list that does not exist: FRR denies everything
    assert leaks(RUNNING.replace("route-map L3LB-V6\n  neighbor", "route-map NOPE\n  neighbor")) == []
    # an IPv4 prefix-list match in the IPv6 family matches no IPv6 route
    assert (
        leaks(
            RUNNING.replace("match ipv6 address prefix-list L3LB-V6", "match ip address prefix-list L3LB-V4")
        )
        == []
    )
    # `any` permits everything
    anyone = RUNNING.replace("permit fd00:100::/64 ge 128", "permit any")
    assert [certain for certain, _ in leaks(anyone)] == [True] and "permits any" in leaks(anyone)[0][1]


def service(
    name: str, managed: list[tuple[str, str]], ingress: list[str], **annotations: str
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "web",
            "name": name,
            "creationTimestamp": f"2026-01-01T00:00:0{len(name)}Z",
            "annotations": annotations,
            "managedFields": [
                {
                    "manager": manager,
                    "operation": "Update",
                    "subresource": "status",
                    "time": when,
                    "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}},
                }
                for manager, when in managed
            ],
        },
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "ipFamilies": ["IPv4"]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}},
    }


def test_takeover_findings() -> None:
    objects = [
        service("metallb", [("controller", "2026-02-01T00:00:00Z")], ["10.0.100.5"]),
        service(
            "taken",
            [("controller", "2026-02-01T00:00:00Z"), ("l3lb/kube-system", "2026-02-02T00:00:00Z")],
            ["10.0.100.6"],
        ),
        service(
            "rewritten",
            [("l3lb/kube-system", "2026-02-02T00:00:00Z"), ("controller", "2026-02-03T00:00:00Z")],
            ["10.0.100.7"],
        ),
        service("outside", [("cilium-operator-lb-ipam", "2026-02-01T00:00:00Z")], ["192.0.2.9"]),
        service("hostname", [], [], **{"kube-vip.io/loadbalancerIPs": "lb.example.com"}),
        service("spaces", [], [], **{"purelb.io/addresses": "10.0.100.20, 10.0.100.21"}),
    ]
    found = traps.takeover(objects, CONFIG, "kube-system")
    by = [(check, status, message) for check, status, message, _ in found]
    assert by[0] == (
        "takeover",
        "fail",
        "status.loadBalancer of 1 Service(s) of ours was written by cilium-operator-lb-ipam (Cilium's LB "
        "IPAM) after l3lb, if at all: web/outside",
    )
    assert by[1] == (
        "takeover",
        "fail",
        "status.loadBalancer of 2 Service(s) of ours was written by controller (MetalLB's controller (its "
        "binary is named controller)) after l3lb, if at all: web/metallb, web/rewritten",
    ), "taken over and not rewritten since: not listed"
    assert by[2] == ("takeover", "fail", "web/outside would move from 192.0.2.9 to 10.0.100.1")
    annotations = [m for c, s, m in by if c == "annotations"]
    assert len(annotations) == 3 and all(s == "warn" for c, s, _ in by if c == "annotations")
    assert "web/hostname: kube-vip.io/loadbalancerIPs: 'lb.example.com'" in annotations[0]
    assert annotations[1].startswith(
        "web/spaces: purelb.io/addresses='10.0.100.20, 10.0.100.21': PureLB refuses"
    )
    assert annotations[2] == (
        "web/spaces: purelb.io/addresses asks for 2 IPv4 addresses (10.0.100.20, 10.0.100.21); l3lb gives a "
        "Service one per family, the first (10.0.100.20)"
    )
    assert all(fix for *_, fix in found), "every finding has a fix"
    clean = traps.takeover(
        [service("mine", [("l3lb/kube-system", "2026-02-02T00:00:00Z")], ["10.0.100.5"])],
        CONFIG,
        "kube-system",
    )
    assert clean == [
        ("takeover", "ok", "1 Service(s) of ours: status written by l3lb or by nobody, every IP kept", "")
    ]
