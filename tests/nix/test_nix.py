"""The Nix side, tested without nixpkgs: every .nix file parses; the module's pure renderers evaluate with
Debian's nix-instantiate and their output is fed to the real consumers (FRR, ``l3lb run``,
``systemd-analyze security``). The module itself is evaluated only where a copy of nixpkgs' lib is
given (L3LB_NIXPKGS_LIB): a local aid, never a stand-in for the checks above."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import systemd_exec
from kubelet import wait_for
from lab import Frr, Lab, eval_module, nix_eval, nix_list, nixos_frr_conf
from netns import NetNS
from testenv import ControlPlane

from l3lb.cli.frr import check_config
from l3lb.config import parse_prefixes

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.nix
NIX_FILES = sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*.nix") if ".venv" not in p.parts)


@pytest.mark.parametrize("path", NIX_FILES)
def test_every_nix_file_parses(path: str) -> None:
    subprocess.run(["nix-instantiate", "--parse", path], cwd=REPO, check=True, capture_output=True)


MINIMUM_RELEASE = (25, 11)
"""The oldest NixOS the module runs on (nixos/default.nix says why)."""


def check_lock(lock: dict) -> None:
    """flake.lock as Nix writes it for a nixos-YY.MM branch: its shape, not its values, so that
    `nix flake update` (a new rev, narHash and lastModified) keeps the project's own tests green."""
    assert lock["version"] == 7 and lock["root"] == "root"
    assert lock["nodes"]["root"]["inputs"] == {"nixpkgs": "nixpkgs"}
    node = lock["nodes"]["nixpkgs"]
    original = node["original"]
    assert {k: original[k] for k in ("owner", "repo", "type")} == {
        "owner": "NixOS",
        "repo": "nixpkgs",
        "type": "github",
    }
    m = re.fullmatch(r"nixos-(\d\d)\.(\d\d)", original["ref"])
    assert m, f"{original['ref']}: pin a stable nixos-YY.MM branch"
    assert (int(m.group(1)), int(m.group(2))) >= MINIMUM_RELEASE, (
        f"{original['ref']} is older than the module"
    )
    locked = node["locked"]
    assert set(locked) == {"owner", "repo", "type", "rev", "narHash", "lastModified"}
    assert {k: locked[k] for k in ("owner", "repo", "type")} == {
        k: original[k] for k in ("owner", "repo", "type")
    }
    assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"]), locked["rev"]
    assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"]), locked["narHash"]
    assert isinstance(locked["lastModified"], int) and locked["lastModified"] > 1_600_000_000


def test_the_whole_tree_has_the_files_the_flake_names() -> None:
    flake = (REPO / "flake.nix").read_text()
    for rel in re.findall(r"\./(nixos/[\w/.-]+\.nix)", flake):
        assert (REPO / rel).is_file(), rel
    lock = json.loads((REPO / "flake.lock").read_text())
    check_lock(lock)
    assert f'nixpkgs.url = "github:NixOS/nixpkgs/{lock["nodes"]["nixpkgs"]["original"]["ref"]}"' in flake


def test_the_lock_check_takes_an_updated_lock_and_refuses_a_broken_one() -> None:
    lock = json.loads((REPO / "flake.lock").read_text())
    updated = json.loads(json.dumps(lock))
    updated["nodes"]["nixpkgs"]["locked"].update(
        rev="0123456789abcdef0123456789abcdef01234567",
        narHash="sha256-" + "A" * 43 + "=",
        lastModified=lock["nodes"]["nixpkgs"]["locked"]["lastModified"] + 86400,
    )
    check_lock(updated)  # what `nix flake update` writes
    for path, value in [
        (("locked", "narHash"), "sha256-short="),
        (("original", "ref"), "nixos-24.05"),
        (("original", "ref"), "nixos-unstable"),
    ]:
        broken = json.loads(json.dumps(lock))
        broken["nodes"]["nixpkgs"][path[0]][path[1]] = value
        with pytest.raises(AssertionError):
            check_lock(broken)


# ---- FRR text on a real FRR
FRR_PREFIXES = ["10.0.100.0/24", "fd00:100::/64", "10.0.200.7/32"]


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.parametrize(
    ("classes", "drain"),
    [(0, False), (4, False), (0, True), (4, True)],
    ids=["plain", "weighted", "drain", "both"],
)
def test_frr_snippet_is_accepted_whole_by_a_real_frr(workdir: Path, classes: int, drain: bool) -> None:
    """Both families and a host-length prefix, without and with weight classes and the drain entry: FRR
    keeps every line (it drops what it rejects), and l3lb check finds everything it looks for in the
    running config."""
    snippet = nix_eval(
        f"import ./nixos/frr.nix {{ prefixes = {nix_list(FRR_PREFIXES)}; asn = 65101; classes = {classes}; "
        f"drain = {'true' if drain else 'false'}; }}"
    )
    assert ("graceful-shutdown" in snippet) is drain
    with NetNS(workdir) as ns:
        frr = Frr(
            ns, workdir / f"frr-snippet-{classes}-{drain}"
        )  # under workdir: FRR runs as user frr, must reach it
        frr.start("frr defaults datacenter\nhostname t\n", "frr defaults datacenter\nhostname t\n" + snippet)
        prefixes = parse_prefixes(FRR_PREFIXES)
        names = tuple(f"l3lbw{w}" for w in range(1, classes + 1))

        def complete() -> str | None:
            running = frr.vtysh("show running-config")
            return (
                running
                if not check_config(running, prefixes, names, "l3lbdrain" if drain else None)
                else None
            )

        running = wait_for(complete, what="bgpd to load the whole snippet")
    for line in snippet.splitlines():
        if line.strip() and not line.startswith("!"):
            assert line.strip() in running, line


@pytest.mark.root
@pytest.mark.cluster
@pytest.mark.frr
def test_frr_snippet_advertises_only_host_routes_inside_the_prefix(frr_lab: Lab) -> None:
    """In the lab every node runs the snippet: a /32 inside the prefix reaches the router; one outside,
    and a /26 inside, do not."""
    node = frr_lab.node("node3")
    if node.agent is not None and node.agent.poll() is None:
        frr_lab.signal_agent("node3", signal.SIGTERM)  # or it would collect the hand-made /32 as a stray
    start = time.monotonic()
    try:
        node.ns.run(["ip", "addr", "add", "10.0.100.77/32", "dev", "lo"])
        node.ns.run(["ip", "addr", "add", "10.0.100.128/26", "dev", "lo"])
        node.ns.run(["ip", "addr", "add", "10.0.201.1/32", "dev", "lo"])
        frr_lab.routes.wait_for("10.0.100.77", {"node3"}, start)
        time.sleep(1)
        routes = {
            r["dst"]
            for r in json.loads(
                subprocess.run(
                    ["ip", "-j", "-n", frr_lab.router.name, "route"], capture_output=True, text=True
                ).stdout
            )
        }
        assert "10.0.100.77" in routes
        assert "10.0.201.1" not in routes and "10.0.100.128/26" not in routes
    finally:
        for cidr in ("10.0.100.77/32", "10.0.100.128/26", "10.0.201.1/32"):
            node.ns.run(["ip", "addr", "del", cidr, "dev", "lo"], check=False)
        node.start_agent()


# ---- the daemon's command line: the module's ExecStart, as systemd reads it, accepted by the real CLI
CREDS = "/run/credentials/l3lb.service"


def exec_argv(unit: dict, credentials: str = CREDS) -> list[str]:
    """The argv systemd gives the agent for the unit's ExecStart= (tests/support/systemd_exec.py)."""
    return systemd_exec.argv(unit["serviceConfig"]["ExecStart"], credentials)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.nixpkgs_lib
def test_exec_start_gives_the_agent_every_argument_verbatim() -> None:
    """systemd expands %-specifiers and $-variables in ExecStart=: the module escapes every argument
    (nixpkgs' utils.escapeSystemdExecArgs) and leaves only %d, the credentials directory, to expand."""
    odd = "example.com/100%-lb$x"
    got = eval_module(
        '{ services.k3s = { enable = true; role = "agent"; }; services.l3lb = { enable = true; '
        f'prefix = "10.0.100.0/24"; loadBalancerClass = "{odd}"; '
        'extraArgs = [ "--lease-namespace" "kube-system" "--log-format" "json" ]; }; }'.replace("$", "\\$")
    )
    argv = exec_argv(got["unit"])
    assert argv[0].endswith("/bin/l3lb") and argv[1] == "run"
    assert option(argv, "--load-balancer-class") == odd
    assert option(argv, "--kubeconfig") == f"{CREDS}/kubeconfig"
    assert argv[-6:-2] == ["--lease-namespace", "kube-system", "--log-format", "json"]


@pytest.mark.cluster
@pytest.mark.nixpkgs_lib
@pytest.mark.parametrize("pools", [False, True], ids=["prefixes", "pools"])
def test_the_units_command_line_is_accepted_by_l3lb_run(
    control_plane: ControlPlane, tmp_path: Path, pools: bool
) -> None:
    where = f"pools = {TWO_POOLS_NIX};" if pools else 'prefix = [ "10.0.100.0/24" "fd00:100::/64" ];'
    got = eval_module(
        "{ services.k3s.enable = true; services.l3lb = { enable = true; "
        f'{where} extraArgs = [ "--no-default-class" ]; weighted = {{ enable = true; classes = 3; }}; }}; }}'
    )
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(control_plane.admin_kubeconfig, creds / "kubeconfig")
    argv = exec_argv(got["unit"], str(creds))
    assert "--weighted" in argv and ("--config" in argv) == pools and ("--prefix" in argv) != pools
    if pools:  # the store path of the rendered file, here the same text in a real file
        argv[argv.index("--config") + 1] = str(pools_file(tmp_path))
    argv = [*argv[1:], "--dry-run"]
    proc = subprocess.Popen([sys.executable, "-m", "l3lb", *argv], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while proc.stderr and (line := proc.stderr.readline()):
            lines.append(line)
            if "initial sync done" in line:
                break
        assert any("initial sync done" in x for x in lines), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


# ---- the unit's settings, scored by systemd
def render_unit(settings: dict) -> str:
    """A [Service] section the way NixOS writes serviceConfig: a list becomes one line per element."""
    lines = ["[Unit]", "Description=l3lb", "[Service]"]
    for key, value in sorted(settings.items()):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={('true' if item else 'false') if isinstance(item, bool) else item}")
    return "\n".join(lines) + "\n"


@pytest.mark.systemd
@pytest.mark.parametrize("allowed", [None, ["localhost"]])
def test_unit_is_hardened(tmp_path: Path, allowed: list[str] | None) -> None:
    allowed_nix = "null" if allowed is None else nix_list(allowed)
    settings = nix_eval(
        'import ./nixos/service.nix { execStart = "/run/current-system/sw/bin/l3lb run"; '
        f'credentials = [ "kubeconfig:/etc/rancher/k3s/k3s.yaml" ]; allowedIPs = {allowed_nix}; }}'
    )
    assert isinstance(settings, dict)
    assert settings["Type"] == "notify" and settings["DynamicUser"] is True
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert settings["RestrictAddressFamilies"] == ["AF_NETLINK", "AF_INET", "AF_INET6", "AF_UNIX"]
    unit = tmp_path / "l3lb.service"
    unit.write_text(render_unit(settings))
    subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for l3lb.service: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 1.5, out.stdout


# ---- the module itself, against nixpkgs' lib
@pytest.mark.nixpkgs_lib
def test_module_on_a_k3s_agent_and_server() -> None:
    agent = eval_module(
        '{ networking.hostName = "n1"; services.k3s = { enable = true; role = "agent"; }; '
        'services.l3lb = { enable = true; prefix = "10.0.100.0/24"; '
        "frr = { enable = true; asn = 65101; }; }; }"
    )
    assert agent["failedAssertions"] == []
    service = agent["unit"]["serviceConfig"]
    assert service["LoadCredential"][0] == "kubeconfig:/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig"
    assert (
        "client-kube-proxy.key:/var/lib/rancher/k3s/agent/client-kube-proxy.key" in service["LoadCredential"]
    )
    argv = exec_argv(agent["unit"])
    assert option(argv, "--kubeconfig") == f"{CREDS}/kubeconfig" and option(argv, "--node-name") == "n1"
    assert agent["unit"]["partOf"] == ["k3s.service"] and agent["unit"]["wantedBy"] == ["k3s.service"]
    assert agent["k3sDisable"] == [], "servicelb is a server-side flag"
    assert agent["identity"] is None and agent["manifests"] == {}, "an agent has no client CA key"
    assert agent["bgpd"] and "redistribute connected route-map L3LB-V4" in agent["frrConfig"]
    assert agent["sysctl"] == {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}
    assert agent["package"] == "l3lb", "mkPackageOption's default: pkgs.l3lb"

    server = eval_module(
        '{ services.k3s = { enable = true; nodeName = "srv"; }; services.l3lb = { '
        'enable = true; prefix = [ "10.0.100.0/24" "fd00:100::/64" ]; '
        "metrics.openFirewall = true; }; }"
    )
    assert server["failedAssertions"] == []
    # the agent's own identity, not cluster-admin's k3s.yaml
    assert server["unit"]["serviceConfig"]["LoadCredential"] == ["kubeconfig:/var/lib/l3lb/kubeconfig"]
    assert server["unit"]["requires"] == ["l3lb-identity.service"]
    assert "l3lb-identity.service" in server["unit"]["after"]
    assert server["identity"]["serviceConfig"]["Type"] == "oneshot"
    assert server["manifests"]["l3lb-rbac"]["source"].endswith("/deploy/rbac.yaml")
    assert option(exec_argv(server["unit"]), "--node-name") == "srv"
    assert server["unit"]["unitConfig"] == {"ConditionPathExists": "/var/lib/l3lb/kubeconfig"}
    assert server["path"]["pathConfig"] == {"PathChanged": "/var/lib/l3lb/kubeconfig", "Unit": "l3lb.service"}
    assert server["k3sDisable"] == ["servicelb"] and server["firewall"] == [9655]
    assert server["kernelModules"] == ["dummy"], "for l3lbdrain (drainSeconds 40 by default)"
    assert "--weighted" not in exec_argv(server["unit"])

    admin = eval_module(
        '{ services.k3s.enable = true; services.l3lb = { enable = true; prefix = "10.0.100.0/24"; '
        "k3sIdentity.enable = false; }; }"
    )
    assert admin["unit"]["serviceConfig"]["LoadCredential"] == ["kubeconfig:/etc/rancher/k3s/k3s.yaml"]
    assert admin["identity"] is None and admin["manifests"] == {}

    weighted = eval_module(
        '{ services.k3s.enable = true; services.l3lb = { enable = true; prefix = "10.0.100.0/24"; '
        "weighted = { enable = true; classes = 3; }; frr = { enable = true; asn = 65101; }; }; }"
    )
    assert option(exec_argv(weighted["unit"]), "--weight-classes") == "3"
    assert weighted["kernelModules"] == ["dummy"]
    assert " match interface l3lbw3\n set extcommunity bandwidth 3" in weighted["frrConfig"]

    plain = eval_module(
        '{ services.l3lb = { enable = true; prefix = "10.0.100.0/24"; kubeconfig = "/etc/l3lb/kc"; }; }'
    )
    assert plain["unit"]["wantedBy"] == ["multi-user.target"] and plain["unit"]["partOf"] == []
    assert plain["path"]["wantedBy"] == ["multi-user.target"] and plain["path"]["before"] == []
    assert server["variables"]["L3LB_PREFIX"] == "10.0.100.0/24,fd00:100::/64"


@pytest.mark.nixpkgs_lib
def test_module_assertions_say_what_to_fix() -> None:
    bad = eval_module('{ services.l3lb = { enable = true; prefix = "10.0.100.0"; frr.enable = true; }; }')
    messages = " ".join(bad["failedAssertions"])
    assert "services.l3lb.prefix must be" in messages
    assert "services.l3lb.kubeconfig has no default without services.k3s" in messages
    assert "services.l3lb.frr.enable needs services.l3lb.frr.asn" in messages
    identity = eval_module(
        '{ services.l3lb = { enable = true; prefix = "10.0.0.0/24"; kubeconfig = "/k"; '
        "k3sIdentity.enable = true; }; }"
    )
    assert "services.l3lb.k3sIdentity needs a k3s server" in " ".join(identity["failedAssertions"])


@pytest.mark.nixpkgs_lib
def test_the_lifecycle_options_reach_the_agent_the_unit_frr_and_the_cli() -> None:
    """drainSeconds (40 by default): the agent's --drain-seconds, TimeoutStopSec leaves it room, FRR gets
    the drain entry, the dummy driver is loaded; 0 turns all of it off. announceHoldDown and
    withdrawOnCordon reach the agent, and l3lb status/check see them through L3LB_* variables."""
    node = 'services.l3lb = { enable = true; prefix = "10.0.100.0/24"; kubeconfig = "/k";'
    default = eval_module(f"{{ {node} frr = {{ enable = true; asn = 65101; }}; }}; }}")
    argv = exec_argv(default["unit"])
    assert option(argv, "--drain-seconds") == "40" and option(argv, "--announce-hold-down") == "0"
    assert "--withdraw-on-cordon" not in argv
    assert default["unit"]["serviceConfig"]["TimeoutStopSec"] == 60
    assert default["unit"]["serviceConfig"]["KillMode"] == "mixed", "systemd's SIGTERM to the agent alone"
    assert " match interface l3lbdrain\n set community graceful-shutdown additive" in default["frrConfig"]
    assert default["kernelModules"] == ["dummy"]
    assert default["variables"]["L3LB_DRAIN_SECONDS"] == "40"
    assert default["variables"]["L3LB_METRICS_ADDRESS"] == "127.0.0.1:9655"
    assert "L3LB_WITHDRAW_ON_CORDON" not in default["variables"]

    set_ = eval_module(
        f"{{ {node} drainSeconds = 0; announceHoldDown = 10; withdrawOnCordon = true; "
        "metrics.enable = false; frr = { enable = true; asn = 65101; }; }; }"
    )
    argv = exec_argv(set_["unit"])
    assert option(argv, "--drain-seconds") == "0" and option(argv, "--announce-hold-down") == "10"
    assert "--withdraw-on-cordon" in argv
    assert set_["unit"]["serviceConfig"]["TimeoutStopSec"] == 20
    assert "l3lbdrain" not in set_["frrConfig"] and "match interface" not in set_["frrConfig"]
    assert set_["kernelModules"] == []
    assert set_["variables"]["L3LB_WITHDRAW_ON_CORDON"] == "1"
    assert "L3LB_METRICS_ADDRESS" not in set_["variables"]

    with pytest.raises(subprocess.CalledProcessError) as bad:
        eval_module(f"{{ {node} announceHoldDown = -1; }}; }}")
    assert "services.l3lb.announceHoldDown" in bad.value.stderr, "a negative hold-down does not evaluate"


# ---- what other modules, the user and k3s do beside the module (each of these failed before)
USER_NODE = '{ services.l3lb = { enable = true; prefix = "10.0.100.0/24"; kubeconfig = "/k"; }; }'


@pytest.mark.nixpkgs_lib
def test_a_second_definition_of_the_arp_sysctls_is_no_conflict() -> None:
    """sysctl values merge with mergeOneOption: a hardening module's equal value, or a user's other one,
    beside the module's would stop the evaluation; the module's are mkDefault, so theirs win."""
    same = eval_module(f'[ {USER_NODE} {{ boot.kernel.sysctl."net.ipv4.conf.all.arp_ignore" = 1; }} ]')
    assert same["failedAssertions"] == [] and same["sysctl"]["net.ipv4.conf.all.arp_ignore"] == 1
    other = eval_module(f'[ {USER_NODE} {{ boot.kernel.sysctl."net.ipv4.conf.all.arp_announce" = 1; }} ]')
    assert other["sysctl"] == {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 1}


@pytest.mark.nixpkgs_lib
def test_the_users_own_cli_variables_win() -> None:
    got = eval_module(f'[ {USER_NODE} {{ environment.variables.L3LB_NODE_NAME = "other"; }} ]')
    assert got["failedAssertions"] == [] and got["variables"]["L3LB_NODE_NAME"] == "other"


@pytest.mark.nixpkgs_lib
@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ('networking.hostName = "Node1";', "node1"),
        ('networking.hostName = "n"; services.k3s = { enable = true; nodeName = "Edge-A"; };', "edge-a"),
    ],
)
def test_the_node_name_is_lower_cased_as_k3s_does(settings: str, name: str) -> None:
    """k3s lower-cases the node name, given or from the hostname (GetHostnameAndIPs in k3s'
    pkg/util/net.go), and NixOS allows capitals in networking.hostName."""
    got = eval_module(f"[ {USER_NODE} {{ {settings} }} ]")
    assert got["nodeName"] == name and option(exec_argv(got["unit"]), "--node-name") == name
    assert got["variables"]["L3LB_NODE_NAME"] == name


@pytest.mark.nixpkgs_lib
def test_prefixes_from_several_modules_merge() -> None:
    """One module may set a string, another a list (types.coercedTo str toList (listOf str))."""
    got = eval_module(
        '[ { services.l3lb = { enable = true; prefix = "10.0.100.0/24"; kubeconfig = "/k"; }; } '
        '{ services.l3lb.prefix = [ "fd00:100::/64" ]; } ]'
    )
    assert got["failedAssertions"] == []
    argv = exec_argv(got["unit"])
    assert {argv[i + 1] for i, a in enumerate(argv) if a == "--prefix"} == {"10.0.100.0/24", "fd00:100::/64"}


@pytest.mark.nixpkgs_lib
def test_an_frr_config_file_would_drop_the_snippet_so_it_is_refused() -> None:
    """services.frr.configFile replaces services.frr.config (nixos/modules/services/networking/frr.nix)."""
    got = eval_module(
        '{ services.frr.configFile = "/etc/my-frr.conf"; services.l3lb = { enable = true; '
        'prefix = "10.0.100.0/24"; kubeconfig = "/k"; frr = { enable = true; asn = 65101; }; }; }'
    )
    assert "services.frr.configFile replaces" in " ".join(got["failedAssertions"])


@pytest.mark.nixpkgs_lib
def test_the_unit_starts_without_waiting_for_the_api_and_restarts_for_a_fresh_kubeconfig() -> None:
    """READY=1 comes at adoption (tests/cluster/test_start.py), so the start timeout covers loading and one
    read of the interface; exit 75 (a kubeconfig copied half-written) is a restart, not a failure."""
    unit = eval_module(USER_NODE)["unit"]["serviceConfig"]
    assert unit["Type"] == "notify" and unit["TimeoutStartSec"] == 30
    assert unit["RestartForceExitStatus"] == 75 and unit["SuccessExitStatus"] == 75
    assert "ProcSubset" not in unit, "ProcSubset=pid hides /proc/stat: every process_* metric goes"


# ---- named pools: the module, the agent's config file, and FRR
TWO_POOLS_NIX = """{
  internet = {
    prefixes = [ "203.0.113.0/26" "2001:db8:100::/64" ];
    reserved = [ "203.0.113.0/30" ];
    autoAssign = false;
    namespaces = [ "web" ];
    nodeSelector.matchLabels."example.com/edge" = "true";
    priority = 10;
    bgp.communities = [ "65000:100" "65000:666" ];
    bgp.largeCommunities = [ "65000:1:100" ];
    bgp.asPathPrepend = [ 65101 ];
  };
  internal = {
    prefixes = [ "10.0.100.0/24" ];
    serviceSelector.matchExpressions = [ { key = "exposure"; operator = "NotIn"; values = [ "internet" ]; } ];
  };
}"""


@pytest.mark.nixpkgs_lib
def test_module_with_two_pools() -> None:
    got = eval_module(
        f"{{ services.k3s.enable = true; services.l3lb = {{ enable = true; pools = {TWO_POOLS_NIX}; "
        "frr = { enable = true; asn = 65101; }; }; }"
    )
    assert got["failedAssertions"] == []
    argv = exec_argv(got["unit"])
    assert option(argv, "--config") == "/nix/store/00000000000000000000000000000000-l3lb-pools.json"
    assert "--prefix" not in argv
    assert (
        got["variables"]["L3LB_CONFIG"].endswith("-l3lb-pools.json") and "L3LB_PREFIX" not in got["variables"]
    )
    frr = got["frrConfig"]
    assert "ip prefix-list L3LB-V4 seq 10 permit 203.0.113.0/26 ge 32" in frr
    assert "ip prefix-list L3LB-V4 seq 20 permit 10.0.100.0/24 ge 32" in frr
    assert (
        "route-map L3LB-V4 permit 10\n match ip address prefix-list L3LB-V4-internet\n"
        " set community 65000:100 65000:666\n set large-community 65000:1:100\n"
        " set as-path prepend 65101\n on-match goto 1010\nexit"
    ) in frr, "on to the interface entries: the drain's, by default"
    assert "L3LB-V4-internal" not in frr, "a pool without attributes has no entry of its own"
    both = eval_module(
        '{ services.l3lb = { enable = true; kubeconfig = "/k"; prefix = "10.0.0.0/24"; '
        f"pools = {TWO_POOLS_NIX}; }}; }}"
    )
    assert "set either prefix (one pool) or pools (named pools)" in " ".join(both["failedAssertions"])
    bad = eval_module(
        '{ services.l3lb = { enable = true; kubeconfig = "/k"; pools.a.prefixes = [ "10.0.0.1" ]; }; }'
    )
    assert "services.l3lb.pools.<name>.prefixes and reserved must be" in " ".join(bad["failedAssertions"])


def pools_file(tmp_path: Path) -> Path:
    """The agent's config file as the module renders it (nixos/pools.nix)."""
    rendered = nix_eval(f"(import ./nixos/pools.nix {{ pools = {TWO_POOLS_NIX}; }}).json")
    path = tmp_path / "l3lb-pools.json"
    path.write_text(rendered)
    return path


def test_the_rendered_pools_are_what_the_agent_reads(tmp_path: Path) -> None:
    """Order by priority then name; only what is set; and the agent's own parser takes the file."""
    from l3lb.ipam.pools import load

    path = pools_file(tmp_path)
    internet, internal = load(path)
    assert (internet.name, internal.name) == ("internet", "internal")
    assert internet.auto_assign is False and internet.namespaces == {"web"}
    assert [str(r) for r in internet.reserved] == ["203.0.113.0/30"]
    assert internet.node_selector.matches({"example.com/edge": "true"})
    assert not internal.service_selector.matches({"exposure": "internet"}) and internal.auto_assign
    assert "bgp" not in path.read_text() and "priority" not in path.read_text()


@pytest.mark.root
@pytest.mark.frr
def test_two_pool_frr_snippet_is_accepted_whole_by_a_real_frr(workdir: Path) -> None:
    """The pools' prefix-lists and route-map entries, with weight classes too (the on-match goto)."""
    snippet = nix_eval(
        f"let p = import ./nixos/pools.nix {{ pools = {TWO_POOLS_NIX}; }}; in import ./nixos/frr.nix "
        "{ prefixes = builtins.concatMap (x: x.prefixes) p.ordered; pools = p.ordered; asn = 65101; "
        "classes = 2; drain = true; }"
    )
    assert "on-match goto 1010" in snippet
    with NetNS(workdir) as ns:
        frr = Frr(ns, workdir / "frr-snippet-pools")
        frr.start("frr defaults datacenter\nhostname t\n", "frr defaults datacenter\nhostname t\n" + snippet)
        prefixes = parse_prefixes(["203.0.113.0/26", "2001:db8:100::/64", "10.0.100.0/24"])

        def complete() -> str | None:
            running = frr.vtysh("show running-config")
            missing = check_config(running, prefixes, ("l3lbw1", "l3lbw2"), "l3lbdrain")
            return running if not missing else None

        running = wait_for(complete, what="bgpd to load the whole snippet")
    for line in snippet.splitlines():
        if line.strip() and not line.startswith("!"):
            assert line.strip() in running, line


UPLINK_FRR_DEFAULTS = {"detect-multiplier 3", "neighbor L3LB-UPLINKS activate"}
"""What FRR leaves out of its running config because it is its own default (tests/lab/test_uplinks.py)."""


# ---- the module's uplinks and zebra settings, on a real FRR as NixOS loads them
UPLINKS_NODE = (
    "{ services.k3s.enable = true; services.l3lb = { enable = true; "
    'prefix = [ "10.0.100.0/24" "fd00:100::/64" ]; frr = { enable = true; asn = 65101; '
    'uplinks = { interfaces = [ "eth1" "eth2" ]; routerId = "10.255.0.9"; }; }; }; }'
)


@pytest.mark.nixpkgs_lib
def test_module_renders_the_uplinks_and_turns_on_bfdd() -> None:
    got = eval_module(UPLINKS_NODE)
    assert got["failedAssertions"] == [] and got["warnings"] == []
    frr = got["frrConfig"]
    assert frr.startswith("! l3lb: advertise Service IPs held on this node\nzebra work-queue 0\n")
    assert (
        " neighbor eth1 interface peer-group L3LB-UPLINKS\n neighbor eth2 interface peer-group L3LB-UPLINKS"
        in frr
    )
    assert " bgp router-id 10.255.0.9" in frr and " neighbor L3LB-UPLINKS bfd profile L3LB-UPLINKS" in frr
    assert got["bfdd"] is True and got["bgpd"] is True
    assert "frr.service" in got["unit"]["after"], "stopped before FRR, so its withdrawals still go out"

    plain = eval_module(
        UPLINKS_NODE.replace('routerId = "10.255.0.9"; ', "").replace(
            "uplinks = {", "workQueue = null; uplinks = { bfd.enable = false;"
        )
    )
    assert "zebra work-queue" not in plain["frrConfig"] and "bfd" not in plain["frrConfig"]
    assert plain["bfdd"] is False and " bgp graceful-restart\n" not in plain["frrConfig"]
    assert any("uplinks.routerId is not set" in w for w in plain["warnings"])

    none = eval_module(
        '{ services.k3s.enable = true; services.l3lb = { enable = true; prefix = "10.0.100.0/24"; '
        "frr = { enable = true; asn = 1; }; }; }"
    )
    assert "neighbor" not in none["frrConfig"] and none["bfdd"] is False and none["warnings"] == []


@pytest.mark.root
@pytest.mark.frr
@pytest.mark.nixpkgs_lib
def test_the_modules_whole_frr_config_loads_into_a_real_frr_as_nixos_loads_it(workdir: Path) -> None:
    """services.frr.config as the module leaves it, written into frr.conf as NixOS' FRR module writes it
    (no `frr defaults`: FRR's traditional profile) and loaded with vtysh -b into zebra, bgpd and bfdd: no
    line refused, every line in the running config."""
    text = eval_module(UPLINKS_NODE)["frrConfig"]
    with NetNS(workdir) as ns:
        frr = Frr(ns, workdir / "frr-module-whole")
        frr.start_integrated(nixos_frr_conf("t", text), bfdd=True)
        running = frr.vtysh("show running-config")
    assert "frr defaults traditional" in running
    for line in text.splitlines():
        if line.strip() and not line.startswith("!") and line.strip() not in UPLINK_FRR_DEFAULTS:
            assert line.strip() in running, line
