"""The network namespace helpers: isolation, processes inside, addresses, the apiserver relay, clean-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from netns import ApiRelay, NetNS, ip
from testenv import ControlPlane, pid_alive

pytestmark = pytest.mark.root


def _namespaces() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()}


def test_namespace_is_isolated_and_removed(tmp_path: Path) -> None:
    with NetNS(tmp_path) as ns:
        assert ns.name in _namespaces()
        ns.run(["ip", "addr", "add", "10.0.100.5/32", "dev", "lo"])
        ns.run(["ip", "addr", "add", "fd00:100::5/128", "dev", "lo"])
        assert ns.host_addresses() == {"10.0.100.5", "fd00:100::5"}
        root = subprocess.run(
            ["ip", "-j", "addr", "show", "dev", "lo"], capture_output=True, text=True
        ).stdout
        assert "10.0.100.5" not in root
        proc = ns.popen(["sleep", "600"], "sleeper")
        assert pid_alive(proc.pid)
    assert ns.name not in _namespaces()
    assert proc.poll() is not None


def test_relay_reaches_the_apiserver_from_inside(tmp_path: Path, control_plane: ControlPlane) -> None:
    relay = ApiRelay(control_plane.state.apiserver_port, tmp_path)
    try:
        with NetNS(tmp_path) as ns:
            relay.attach(ns)
            code = (
                "import sys; from kubernetes import client, config; "
                "api = config.new_client_from_config(sys.argv[1]); "
                "print(client.VersionApi(api).get_code().git_version)"
            )
            out = ns.run([sys.executable, "-c", code, str(control_plane.admin_kubeconfig)]).stdout.strip()
            assert out.startswith("v1.")
    finally:
        relay.close()
