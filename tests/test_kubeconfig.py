"""Kubeconfigs that point to certificate files by path (as k3s agent kubeconfigs do), under systemd's
LoadCredential: the unreadable paths are taken from the credentials directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from testenv import ControlPlane

from l3lb.kube import Api, load_client

pytestmark = pytest.mark.cluster


def test_certificate_files_are_found_in_the_credentials_directory(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    kubeconfig = control_plane.identity(
        "k3s-style", ["l3lb:agents"], tmp_path / "agent.kubeconfig", embed=False
    )
    text = kubeconfig.read_text()
    # as on a k3s agent: absolute paths the (dynamic) service user cannot read
    moved = tmp_path / "unreadable"
    moved.mkdir()
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("k3s-style.crt", "k3s-style.key", "ca.crt"):
        shutil.copy(control_plane.pki / name, creds / name)
        text = text.replace(str(control_plane.pki / name), str(moved / name))
    kubeconfig.write_text(text)

    version = Api(load_client(str(kubeconfig), str(creds))).get_json("/version")
    assert version["gitVersion"].startswith("v1.")
    with pytest.raises(Exception, match=r"No such file|not exist|does not exist"):
        load_client(str(kubeconfig), None)
