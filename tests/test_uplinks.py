"""The node's own BGP sessions as nixos/frr.nix renders them (``uplinks``), on a real FRR 8.4 under FRR's
default ``traditional`` profile (ebgp-requires-policy on, IPv6 not activated by default), loaded as NixOS
loads it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lab import Frr, frr_snippet, nixos_frr_conf
from netns import NetNS

# ---- the rendered text on a real FRR, loaded as NixOS loads it
UPLINK_CASES = {
    "dual-stack": dict(
        prefixes=["10.0.100.0/24", "fd00:100::/64", "10.0.200.7/32"],
        uplinks={"interfaces": ["eth1", "eth2"], "routerId": "10.255.0.1"},
    ),
    "weighted, default route in, own timers": dict(
        prefixes=["10.0.100.0/24", "fd00:100::/64"],
        classes=4,
        uplinks={
            "interfaces": ["eth1"],
            "remoteAs": 65000,
            "accept": "default",
            "timers": {"keepalive": 10, "hold": 30},
            "bfd": {"detectMultiplier": 5, "receiveInterval": 250, "transmitInterval": 200},
            "gracefulRestart": {"restartTime": 60},
        },
    ),
    "pools, IPv4 only, nothing in, no BFD": dict(
        prefixes=["203.0.113.0/26", "10.0.100.0/24"],
        pools=[
            {"name": "internet", "prefixes": ["203.0.113.0/26"], "bgp": {"communities": ["65000:100"]}},
            {"name": "internal", "prefixes": ["10.0.100.0/24"]},
        ],
        classes=2,
        uplinks={
            "interfaces": ["eth1", "eth2"],
            "remoteAs": "internal",
            "accept": "none",
            "bfd": {"enable": False},
        },
    ),
    "IPv6 only, no graceful restart": dict(
        prefixes=["fd00:100::/64"],
        uplinks={"interfaces": ["eth1"], "gracefulRestart": {"enable": False}},
    ),
}

# What FRR leaves out of its running config because it is FRR's own default (checked otherwise below).
FRR_DEFAULTS = {
    "detect-multiplier 3",  # bfdd's defaults
    "receive-interval 300",
    "transmit-interval 300",
    "neighbor L3LB-UPLINKS activate",  # IPv4 unicast: active by default (`bgp default ipv4-unicast`)
}


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nix
@pytest.mark.parametrize("case", UPLINK_CASES, ids=list(UPLINK_CASES))
def test_uplinks_text_is_accepted_whole_by_a_real_frr(workdir: Path, case: str) -> None:
    """frr.conf as NixOS writes it, loaded with ``vtysh -b`` into zebra, bgpd and bfdd started under FRR's
    ``traditional`` profile: no line refused (vtysh -b fails on any), every line in the running config, the
    ebgp-requires-policy default kept, and each family activated on the interface peers."""
    from l3lb.config import parse_prefixes
    from l3lb.frr import check_config

    args = UPLINK_CASES[case]
    text = frr_snippet(args["prefixes"], 65101, args.get("classes", 0), args.get("pools"), args["uplinks"])
    bfd = args["uplinks"].get("bfd", {}).get("enable", True)
    assert ("bfd profile L3LB-UPLINKS" in text) == bfd
    with NetNS(workdir) as ns:
        frr = Frr(ns, workdir / f"frr-uplinks-{list(UPLINK_CASES).index(case)}")
        frr.start_integrated(nixos_frr_conf("t", text), bfdd=bfd)
        running = frr.vtysh("show running-config")
        peers = frr.vtysh_json("show bgp neighbors json")
    assert "frr defaults traditional" in running and "ebgp-requires-policy" not in running
    for line in text.splitlines():
        if line.strip() and not line.startswith("!") and line.strip() not in FRR_DEFAULTS:
            assert line.strip() in running, line
    names = tuple(f"l3lbw{w}" for w in range(1, args.get("classes", 0) + 1))
    assert check_config(running, parse_prefixes(args["prefixes"]), names) == []
    v6 = any(":" in p for p in args["prefixes"])
    for interface in args["uplinks"]["interfaces"]:
        families = peers[interface]["addressFamilyInfo"]
        assert peers[interface]["peerGroup"] == "L3LB-UPLINKS"
        assert "ipv4Unicast" in families and ("ipv6Unicast" in families) == v6, families
        for name, info in families.items():
            assert info["inboundPathPolicyConfig"] and info["outboundPathPolicyConfig"], (name, info)
        hold = args["uplinks"].get("timers", {}).get("hold", 9)
        assert peers[interface]["bgpTimerConfiguredHoldTimeMsecs"] == hold * 1000


def test_without_uplinks_the_output_is_unchanged() -> None:
    """``uplinks = null`` (the default) renders exactly what frr.nix rendered before it had the argument."""
    plain = frr_snippet(["10.0.100.0/24", "fd00:100::/64"], 65101, 2)
    assert frr_snippet(["10.0.100.0/24", "fd00:100::/64"], 65101, 2, None, None) == plain
    assert "UPLINKS" not in plain and "neighbor" not in plain and "bfd" not in plain


@pytest.mark.nix
@pytest.mark.parametrize(
    ("uplinks", "message"),
    [
        ({"interfaces": []}, "interfaces must be a non-empty list"),
        ({"interfaces": ["eth1"], "accept": "some"}, 'accept must be "all", "default" or "none"'),
        ({"interfaces": ["eth1"], "remoteAs": "peer"}, 'remoteAs must be "external", "internal" or an AS'),
    ],
)
def test_a_wrong_uplinks_argument_says_what_is_wrong(uplinks: dict, message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        frr_snippet(["10.0.100.0/24"], 65101, uplinks=uplinks)
    assert message in err.value.stderr
