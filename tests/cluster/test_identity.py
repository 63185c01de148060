"""The agent's own identity on a k3s server (nixos/identity.nix, run by l3lb-identity.service): the
rendered script, run by bash with openssl against the test control plane's CA in place of k3s' client
CA, makes a kubeconfig that the apiserver accepts, with exactly the permissions of deploy/rbac.yaml and
nothing of cluster-admin's."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from lab import nix_eval
from testenv import ControlPlane

from l3lb.k8s.api import Api, load_client, may
from l3lb.k8s.permissions import check

pytestmark = [pytest.mark.cluster, pytest.mark.nix]


def render(tmp_path: Path, control_plane: ControlPlane, **extra: object) -> Path:
    """The script for node "Node1"'s agent, with k3s' paths pointing at the test control plane."""
    # k3s.yaml as client-go writes it (YAML, one scalar a line), from the admin kubeconfig (JSON)
    k3s_yaml = tmp_path / "k3s.yaml"
    k3s_yaml.write_text(yaml.safe_dump(json.loads(control_plane.admin_kubeconfig.read_text())))
    args = {
        "caCert": str(control_plane.pki / "ca.crt"),
        "caKey": str(control_plane.pki / "ca.key"),
        "adminKubeconfig": str(k3s_yaml),
        "out": str(tmp_path / "l3lb" / "kubeconfig"),
        "user": "l3lb:node1",
        **extra,
    }
    text = nix_eval(
        f"import ./nixos/identity.nix {{ {' '.join(f'{k} = {json.dumps(v)};' for k, v in args.items())} }}"
    )
    script = tmp_path / "identity.sh"
    script.write_text(text)
    return script


def run(script: Path) -> str:
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout


def test_the_minted_identity_has_exactly_the_agents_permissions(
    tmp_path: Path, control_plane: ControlPlane, agent_kubeconfig: Path
) -> None:
    """agent_kubeconfig applied deploy/rbac.yaml, as services.k3s.manifests does on a k3s server."""
    script = render(tmp_path, control_plane)
    assert "wrote" in run(script)
    kubeconfig = tmp_path / "l3lb" / "kubeconfig"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600, "it holds the private key"
    assert not list((tmp_path / "l3lb").glob(".identity.*")), "the work folder is gone"
    api = Api(load_client(str(kubeconfig)))
    results = check(api, "kube-system")
    assert [p.describe("kube-system") for p, ok in results if not ok] == []
    assert not may(api, "list", "", "secrets"), "not cluster-admin"
    assert not may(api, "delete", "", "services")


def test_a_valid_identity_is_kept_and_one_near_its_end_is_made_anew(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    script = render(tmp_path, control_plane)
    run(script)
    kubeconfig = tmp_path / "l3lb" / "kubeconfig"
    first = kubeconfig.read_text()
    assert "is valid for more than 90 days" in run(script)
    assert kubeconfig.read_text() == first
    kubeconfig.unlink()
    short = render(tmp_path, control_plane, days=30)  # minted for 30 days: under the 90 of renewal
    run(short)
    second = kubeconfig.read_text()
    assert "wrote" in run(short), "a certificate with fewer than 90 days left is made anew at every start"
    assert kubeconfig.read_text() != second


def test_without_k3s_admin_kubeconfig_it_fails_saying_why(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    script = render(tmp_path, control_plane, adminKubeconfig=str(tmp_path / "missing.yaml"))
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert out.returncode != 0
    assert not (tmp_path / "l3lb" / "kubeconfig").exists()
