"""Kubeconfigs that point to certificate files by path (as k3s agent kubeconfigs do), under systemd's
LoadCredential: the unreadable paths are taken from the credentials directory."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubelet import wait_for
from testenv import ControlPlane

from l3lb.k8s.api import Api, load_client

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


def _holding(roots: list[Path], material: bytes, skip: set[Path]) -> list[str]:
    """Regular files under ``roots`` (at most 1 MiB each, symlinks not followed) that contain ``material``."""
    found = []
    for root in roots:
        for folder, _, files in os.walk(root, onerror=lambda err: None):
            for name in files:
                path = Path(folder) / name
                try:
                    if path in skip or path.is_symlink() or path.stat().st_size > 1 << 20:
                        continue
                    if material in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found


def test_inline_keys_never_reach_the_disk(
    control_plane: ControlPlane, agent_kubeconfig: Path, tmp_path: Path
) -> None:
    """An agent started with a kubeconfig that carries its client key inline leaves no copy of the key in
    /tmp or in its TMPDIR (the client library wrote it to a temporary file, which a SIGKILL left behind)."""
    kubeconfig = control_plane.identity("inline-key", ["l3lb:agents"], tmp_path / "inline.kubeconfig")
    user = json.loads(kubeconfig.read_text())["users"][0]["user"]
    pem = base64.b64decode(user["client-key-data"])
    material = pem.splitlines()[2]  # a line of the key's body: in a PEM file, whatever its header says
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    argv = [sys.executable, "-m", "l3lb", "run", "--dry-run", "--prefix", "10.0.100.0/24"]
    argv += ["--node-name", "inline-key", "--kubeconfig", str(kubeconfig), "--metrics-address", "off"]
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stderr=out, env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        wait_for(lambda: "initial sync done" in log.read_text(), timeout=30, what="the initial sync")
        skip = {control_plane.pki / "inline-key.key"}  # the control plane's own copy, which minted it
        assert _holding([Path("/tmp"), tmpdir], material, skip) == []
        held = [os.readlink(f) for f in Path(f"/proc/{proc.pid}/fd").iterdir()]
        assert any(h.startswith("/memfd:l3lb-credential") for h in held), held
    finally:
        proc.kill()
        proc.wait()
