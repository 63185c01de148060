"""What the flake's two checks depend on, checked here without nixpkgs.

- ``checks.vm``: the VM test's nodes (nixos/tests/nodes.nix), evaluated with nixpkgs' lib.evalModules and a
  model of the test framework's own addressing (tests/nix/eval-vm-nodes.nix), must make a network that
  works: no address on two nodes, the agent pointed at the server, BGP sessions on interfaces that exist
  and face each other, FRR configs with the module's snippet after the node's own block, and a client
  whose route to the Service prefix leads to the router, which announces the client back to the nodes.
- ``checks.package``: the check phase calls pytest with what nixos/package.nix gives pytestCheckHook; no
  list element may hold a space (the hook would split it again), and the suite must pass as the build
  sandbox runs it: not root, with no control plane, FRR or Nix.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from lab import nix_eval, nix_list
from testenv import NIXPKGS_LIB

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.nix, pytest.mark.nixpkgs_lib]
PREFIX = "10.0.100.0/24"


@cache
def vm_nodes() -> dict[str, Any]:
    nodes = nix_eval(f"import ./tests/nix/eval-vm-nodes.nix {{ libPath = {NIXPKGS_LIB}; }}")
    assert isinstance(nodes, dict)
    return nodes


def addresses(node: dict[str, Any]) -> dict[str, list[ipaddress.IPv4Interface]]:
    """Interface name -> its IPv4 addresses with prefix length."""
    return {
        name: [ipaddress.IPv4Interface(a) for a in iface["addresses"]]
        for name, iface in node["interfaces"].items()
    }


def owner(address: ipaddress.IPv4Address) -> list[tuple[str, str]]:
    """(node, interface) pairs that hold ``address``."""
    return [
        (name, iface)
        for name, node in vm_nodes().items()
        for iface, addrs in addresses(node).items()
        if any(a.ip == address for a in addrs)
    ]


def vlan_of(node: str, interface: str) -> int:
    """The VLAN behind ethN: the Nth entry of virtualisation.vlans."""
    m = re.fullmatch(r"eth(\d+)", interface)
    assert m, f"{node}: {interface} is not a VLAN interface"
    return vm_nodes()[node]["vlans"][int(m.group(1)) - 1]


def bgp_interfaces(frr_config: str) -> set[str]:
    return set(re.findall(r"^\s*neighbor (\S+) interface\b", frr_config, re.M))


def test_no_address_is_on_two_nodes() -> None:
    seen: dict[str, str] = {}
    for name, node in vm_nodes().items():
        for iface, values in node["interfaces"].items():
            for a in values["addresses"] + values["addresses6"]:
                ip = str(ipaddress.ip_interface(a).ip)
                assert ip not in seen, f"{ip} is on {seen[ip]} and on {name} {iface}"
                seen[ip] = f"{name} {iface}"


def test_every_vlan_interface_has_the_frameworks_address_only() -> None:
    """A node's own address would be added to the framework's, not replace it: nodes set none."""
    for name, node in vm_nodes().items():
        for iface, addrs in addresses(node).items():
            vlan = vlan_of(name, iface)
            assert addrs == [ipaddress.IPv4Interface(f"192.168.{vlan}.{node['number']}/24")], (name, iface)


def test_k3s_agent_joins_the_server_on_their_shared_network() -> None:
    nodes = vm_nodes()
    server, agent = nodes["server"], nodes["agent"]
    assert server["k3s"]["role"] == "server" and agent["k3s"]["role"] == "agent"
    m = re.fullmatch(r"https://([\d.]+):6443", agent["k3s"]["serverAddr"])
    assert m, agent["k3s"]["serverAddr"]
    target = ipaddress.IPv4Address(m.group(1))
    assert [n for n, _ in owner(target)] == ["server"], f"serverAddr {target} is held by {owner(target)}"
    assert str(target) == server["k3s"]["nodeIP"]
    (_, server_iface) = owner(target)[0]
    agent_ip = ipaddress.IPv4Address(agent["k3s"]["nodeIP"])
    assert [(n, vlan_of(n, i)) for n, i in owner(agent_ip)] == [("agent", vlan_of("server", server_iface))]


@pytest.mark.parametrize("name", ["server", "agent"])
def test_k3s_node_ip_is_on_its_flannel_interface(name: str) -> None:
    node = vm_nodes()[name]
    flags = " ".join(node["k3s"]["extraFlags"])
    m = re.search(r"--flannel-iface[= ](\S+)", flags)
    assert m, flags
    assert ipaddress.IPv4Address(node["k3s"]["nodeIP"]) in [a.ip for a in addresses(node)[m.group(1)]]


def test_bgp_sessions_are_on_interfaces_that_exist_and_face_each_other() -> None:
    nodes = vm_nodes()
    router_ifaces = bgp_interfaces(nodes["router"]["frrConfig"])
    router_vlans = {vlan_of("router", i) for i in router_ifaces}
    for name, node in nodes.items():
        for iface in bgp_interfaces(node["frrConfig"]):
            assert iface in node["interfaces"], f"{name}: FRR neighbor {iface} does not exist"
    for name in ("server", "agent"):
        (iface,) = bgp_interfaces(nodes[name]["frrConfig"])
        assert vlan_of(name, iface) in router_vlans, f"{name} {iface} faces no router BGP interface"
    assert len(router_vlans) == len(router_ifaces) == 2


@pytest.mark.parametrize("name", ["server", "agent"])
def test_the_nodes_frr_config_is_the_modules_alone_with_policy_kept(name: str) -> None:
    """The node's BGP is the module's uplinks, nothing hand-written: its whole FRR config is what frr.nix
    renders, and no side turns ebgp-requires-policy off (NixOS' FRR runs the traditional profile)."""
    node = vm_nodes()[name]
    assert node["l3lb"]["failedAssertions"] == []
    prefixes, asn = nix_list([node["l3lb"]["prefix"]]), node["l3lb"]["asn"]
    (iface,) = bgp_interfaces(node["frrConfig"])
    uplinks = f'{{ interfaces = [ "{iface}" ]; routerId = "10.255.0.{asn - 65000}"; }}'
    args = f"prefixes = {prefixes}; asn = {asn}; uplinks = {uplinks}; workQueue = 0; drain = true;"
    snippet = nix_eval(f"import ./nixos/frr.nix {{ {args} }}")
    assert node["frrConfig"] == snippet
    assert " set community graceful-shutdown additive" in snippet, "drainSeconds 10: the drain entry"
    assert " neighbor L3LB-UPLINKS bfd profile L3LB-UPLINKS" in snippet
    for n in vm_nodes().values():
        assert "no bgp ebgp-requires-policy" not in n["frrConfig"]


def test_client_reaches_the_prefix_through_the_router_and_the_router_announces_the_client() -> None:
    nodes = vm_nodes()
    client = nodes["client"]
    prefix = ipaddress.IPv4Network(PREFIX)
    routes = [(i, r) for i, iface in client["interfaces"].items() for r in iface["routes"]]
    to_prefix = [(i, r) for i, r in routes if ipaddress.IPv4Network(r["dst"]) == prefix]
    assert len(to_prefix) == 1, routes
    iface, route = to_prefix[0]
    via = ipaddress.IPv4Address(route["via"])
    (src,) = addresses(client)[iface]
    assert via in src.network, f"{via} is not on the client's {iface} network {src.network}"
    assert [n for n, _ in owner(via)] == ["router"], f"{via} is held by {owner(via)}"
    # The router's filters: nodes' /32s inside the prefix in, the client's network out to the nodes.
    router = nodes["router"]["frrConfig"]
    from_nodes = re.findall(r"^ip prefix-list FROM-NODES seq \d+ permit (\S+) ge 32$", router, re.M)
    to_nodes = re.findall(r"^ip prefix-list TO-NODES seq \d+ permit (\S+)$", router, re.M)
    assert from_nodes == [PREFIX]
    assert any(src.ip in ipaddress.IPv4Network(n) for n in to_nodes), (src, to_nodes)


def test_l3lb_starts_once_the_agents_kubeconfig_exists() -> None:
    agent = vm_nodes()["agent"]["l3lb"]
    kubeconfig = "/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig"
    assert agent["unit"]["serviceConfig"]["LoadCredential"][0] == f"kubeconfig:{kubeconfig}"
    assert agent["unit"]["unitConfig"]["ConditionPathExists"] == kubeconfig
    assert "startLimitIntervalSec" not in agent["unit"]
    path = agent["path"]
    assert path["pathConfig"] == {"PathChanged": kubeconfig, "Unit": "l3lb.service"}
    assert path["wantedBy"] == ["k3s.service"] and path["before"] == ["k3s.service"]


# ---- checks.package: the check phase as pytestCheckHook runs it
# List attributes reach the builder's shell space-joined unless __structuredAttrs is set; the hook then splits
# them on whitespace again (stdenv's concatTo for pytestFlags and disabledTestPaths; concatStringsSep for
# disabledTests and the marks). Read at nixpkgs' pytest-check-hook.sh and pkgs/stdenv/generic/setup.sh.
HOOK_LISTS = (
    "pytestFlags",
    "pytestFlagsArray",
    "disabledTests",
    "enabledTests",
    "disabledTestPaths",
    "enabledTestPaths",
    "disabledTestMarks",
    "enabledTestMarks",
)


@cache
def package_attrs() -> dict[str, Any]:
    attrs = nix_eval(f"import ./tests/nix/eval-package.nix {{ libPath = {NIXPKGS_LIB}; }}")
    assert isinstance(attrs, dict)
    return attrs


def hook_words(attrs: dict[str, Any], name: str) -> list[str]:
    """What the hook sees of a list attribute: the joined string split on whitespace (no structured attrs)."""
    value = attrs.get(name, [])
    if attrs.get("__structuredAttrs"):
        return list(value)
    return " ".join(value if isinstance(value, list) else [value]).split()


def hook_argv(attrs: dict[str, Any]) -> list[str]:
    """The pytest arguments pytestCheckHook builds from the package's attributes."""

    def expression(include: str, exclude: str) -> str:
        inc, exc = hook_words(attrs, include), hook_words(attrs, exclude)
        inc_s = "((" + ") or (".join(inc) + "))" if inc else ""
        exc_s = (" and " if inc_s else "") + "not (" + ") and not (".join(exc) + ")" if exc else ""
        return inc_s + exc_s

    argv = [
        f"--deselect={p}" if "::" in p else f"--ignore-glob={p}"
        for p in hook_words(attrs, "disabledTestPaths")
    ]
    if hook_words(attrs, "enabledTests") or hook_words(attrs, "disabledTests"):
        argv += ["-k", expression("enabledTests", "disabledTests")]
    if hook_words(attrs, "enabledTestMarks") or hook_words(attrs, "disabledTestMarks"):
        argv += ["-m", expression("enabledTestMarks", "disabledTestMarks")]
    argv += shlex.split(" ".join(attrs.get("pytestFlagsArray", [])))  # the obsolete array is eval'd
    return argv + hook_words(attrs, "pytestFlags")


def test_no_hook_list_element_would_be_split() -> None:
    attrs = package_attrs()
    if attrs.get("__structuredAttrs"):
        return
    for name in HOOK_LISTS:
        for element in attrs.get(name, []):
            assert not re.search(r"\s", element), (
                f"{name} element {element!r} would reach pytest split on spaces"
            )


def test_hook_model_splits_what_the_hook_splits() -> None:
    """The model above, on the flags this package had before: pytest got files named 'cluster', 'and'..."""
    before = {"pytestFlags": ["-m", "not cluster and not root", "-p", "no:cacheprovider"]}
    assert hook_argv(before) == ["-m", "not", "cluster", "and", "not", "root", "-p", "no:cacheprovider"]
    assert hook_argv({**before, "__structuredAttrs": True})[:2] == ["-m", "not cluster and not root"]
    assert hook_argv({"disabledTestMarks": ["cluster", "root"]}) == ["-m", "not (cluster) and not (root)"]


@pytest.mark.root
def test_check_phase_passes_as_the_build_sandbox_runs_it() -> None:
    """The package's source (its fileset) and pytest with the hook's arguments, run as Nix runs a sandboxed
    build: uid 1000 and gid 100 in a user namespace, a network namespace of its own, no HOME, and on PATH
    only the virtualenv's bin (no ip, socat, FRR or Nix). Every test passes or skips itself with a reason."""
    unshare = shutil.which("unshare")
    assert unshare
    with tempfile.TemporaryDirectory(prefix="l3lb-check-phase-") as tmp:
        top = Path(tmp)
        src = top / "source"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "l3lb", "tests", "deploy"):
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
        env = {"PATH": str(Path(sys.executable).parent), "HOME": "/homeless-shelter", "LANG": "C.UTF-8"}
        argv = [unshare, "--user", "--map-user=1000", "--map-group=100", "--net"]
        argv += [sys.executable, "-m", "pytest", "-rs", *hook_argv(package_attrs())]
        proc = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"\d+ passed", out) and " error" not in out, out
    assert (
        "needs root" in out and "needs the control plane binaries" in out and "needs nix-instantiate" in out
    )


# ---- checks.vm: the test script, checked as the driver checks it before running it
# nixos/lib/testing/driver.nix type-checks the script with mypy (after the driver's type hints and one
# `<node>: QemuMachine` line per node) and lints it with pyflakes, the node names and the driver's symbols
# given as builtins. A script that fails either never starts a VM.
DRIVER_SYMBOLS = (
    "start_all",
    "subtest",
    "retry",
    "machines",
    "driver",
    "log",
    "join_all",
    "polling_condition",
)


def vm_script() -> str:
    vm = (REPO / "nixos" / "tests" / "vm.nix").read_text()
    m = re.search(r"testScript = ''\n(.*?)'' \+ builtins.readFile ./vm_test.py;", vm, re.S)
    assert m, "vm.nix: testScript is no longer '' ... '' + builtins.readFile ./vm_test.py"
    prefix = m.group(1).replace('"${vip}"', '"10.0.100.5"')
    assert "${" not in prefix, prefix
    return textwrap.dedent(prefix) + (REPO / "nixos" / "tests" / "vm_test.py").read_text()


def test_vm_script_type_checks_as_the_driver_does(tmp_path: Path) -> None:
    hints = "".join(f"{name}: Machine\n" for name in vm_nodes())
    script = tmp_path / "testScriptWithTypes.py"
    script.write_text((REPO / "tests" / "nix" / "driver_types.py").read_text() + hints + vm_script())
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-implicit-optional", "--no-error-summary", str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vm_script_passes_pyflakes_with_the_drivers_builtins(tmp_path: Path) -> None:
    script = tmp_path / "test-script"
    script.write_text(vm_script())
    env = {**os.environ, "PYFLAKES_BUILTINS": ",".join([*vm_nodes(), *DRIVER_SYMBOLS])}
    proc = subprocess.run(
        [sys.executable, "-m", "pyflakes", str(script)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_flakes_module_brings_its_own_package_and_the_vm_test() -> None:
    """`imports = [ l3lb.nixosModules.default ]` on a nixpkgs without an l3lb package: the module's own
    default (mkPackageOption: pkgs.l3lb) gives way to the flake's package, which carries the VM test as
    passthru.tests, and `nix run .#l3lb` runs its program."""
    got = nix_eval(f"import ./tests/nix/eval-flake.nix {{ libPath = {NIXPKGS_LIB}; }}")
    assert got == {
        "package": "l3lb",
        "samePackage": True,
        "app": "/nix/store/00000000000000000000000000000000-l3lb/bin/l3lb",
        "passthruTests": ["vm"],
    }
