"""Where nixpkgs' lib/ comes from (tests/nixpkgs_lib.py): each source present or absent, with a temporary
HOME, a repository without ../shared beside it, and flake.lock's nixpkgs fetched from a local HTTP server
(a tarball made here, its NAR hash computed by nix-hash as Nix computes narHash)."""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import nixpkgs_lib
import pytest
from testenv import NIXPKGS_LIB, cache_dir

pytestmark = [pytest.mark.nix, pytest.mark.nixpkgs_lib]
REPO = Path(__file__).resolve().parents[2]
REV = "0123456789abcdef0123456789abcdef01234567"


def fake_lib(path: Path, marker: str) -> Path:
    path.mkdir(parents=True)
    (path / "default.nix").write_text(f"# {marker}\n{{ }}\n")
    return path


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A repository with only a flake.lock, in a folder with nothing beside it."""
    repo = tmp_path / "work" / "l3lb"
    repo.mkdir(parents=True)
    lock = json.loads((REPO / "flake.lock").read_text())
    lock["nodes"]["nixpkgs"]["locked"]["rev"] = REV
    (repo / "flake.lock").write_text(json.dumps(lock))
    return repo


def set_nar_hash(repo: Path, value: str) -> None:
    lock = json.loads((repo / "flake.lock").read_text())
    lock["nodes"]["nixpkgs"]["locked"]["narHash"] = value
    (repo / "flake.lock").write_text(json.dumps(lock))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A local HTTP server of tarballs: (URL template with {rev}, path -> bytes)."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{{rev}}.tar.gz", files
    httpd.shutdown()


def tarball(tmp_path: Path) -> tuple[bytes, str]:
    """A GitHub-style archive (one top folder) of a small nixpkgs, and that folder's NAR hash."""
    top = tmp_path / "src" / f"nixpkgs-{REV}"
    fake_lib(top / "lib", "fetched")
    (top / "pkgs").mkdir()
    (top / "pkgs" / "big.nix").write_text("{ }\n")
    (top / "COPYING").write_text("MIT\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(top, arcname=top.name)
    return buf.getvalue(), nixpkgs_lib.nar_hash(top)


def test_each_source_in_its_order(tmp_path: Path, clone: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    with pytest.raises(nixpkgs_lib.NotFound) as nothing:
        nixpkgs_lib.find(repo=clone, env=env)
    line = str(nothing.value)
    assert "\n" not in line and all(
        way in line for way in ("L3LB_NIXPKGS_LIB", "shared/nixpkgs-lib/lib", "NIX_PATH", f"nixpkgs-{REV}")
    ), line

    cached = fake_lib(home / ".cache" / "l3lb" / f"nixpkgs-{REV}" / "lib", "cache")
    assert nixpkgs_lib.find(repo=clone, env=env) == cached
    on_path = fake_lib(tmp_path / "channel" / "nixpkgs" / "lib", "NIX_PATH")
    env["NIX_PATH"] = f"nixpkgs={on_path.parent}"
    assert nixpkgs_lib.find(repo=clone, env=env) == on_path
    shared = fake_lib(clone.parent / "shared" / "nixpkgs-lib" / "lib", "shared")
    assert nixpkgs_lib.find(repo=clone, env=env) == shared
    given = fake_lib(tmp_path / "given", "env")
    assert nixpkgs_lib.find(repo=clone, env={**env, "L3LB_NIXPKGS_LIB": str(given)}) == given
    with pytest.raises(nixpkgs_lib.NotFound, match=r"has no default\.nix"):
        nixpkgs_lib.find(repo=clone, env={**env, "L3LB_NIXPKGS_LIB": str(tmp_path / "nowhere")})


def test_flake_locks_nixpkgs_is_fetched_once_and_only_with_its_nar_hash(
    tmp_path: Path, clone: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    home = tmp_path / "home"
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "L3LB_NIXPKGS_URL": url}
    data, nar = tarball(tmp_path)
    files[f"/{REV}.tar.gz"] = data

    set_nar_hash(clone, "sha256-" + "A" * 43 + "=")
    with pytest.raises(nixpkgs_lib.NotFound, match=re.escape(f"its NAR hash is {nar}")):
        nixpkgs_lib.find(repo=clone, env=env, fetch=True)
    assert not (home / ".cache" / "l3lb" / f"nixpkgs-{REV}").exists(), "nothing kept"

    set_nar_hash(clone, nar)
    got = nixpkgs_lib.find(repo=clone, env=env, fetch=True)
    assert got == home / ".cache" / "l3lb" / f"nixpkgs-{REV}" / "lib"
    assert "fetched" in (got / "default.nix").read_text()
    assert not (got.parent / "pkgs").exists(), "only lib/ is kept"
    files.clear()  # the next look finds the cache, with no server
    assert nixpkgs_lib.find(repo=clone, env=env) == got


def test_a_clone_without_shared_evaluates_the_module_with_nixpkgs_on_nix_path(tmp_path: Path) -> None:
    """The repository's files (as committed, with the working tree's changes) in a folder with no ../shared
    beside it: setup's look-up finds <nixpkgs/lib> on a NIX_PATH set up here and the module evaluations
    run; with nothing to find it prints its one line, fast."""
    clone = tmp_path / "elsewhere" / "l3lb"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    channel = tmp_path / "channel" / "nixpkgs"
    channel.mkdir(parents=True)
    (channel / "lib").symlink_to(NIXPKGS_LIB)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("L3LB_NIXPKGS_LIB", "NIX_PATH")},
        "HOME": str(tmp_path / "home"),
        "L3LB_TESTENV_CACHE": str(cache_dir()),
        "L3LB_NIXPKGS_URL": "http://127.0.0.1:9/{rev}.tar.gz",  # nothing listens: no fetch
    }
    alone = subprocess.run(
        [sys.executable, "tests/nixpkgs_lib.py", "--fetch"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert alone.returncode == 1 and alone.stderr.count("\n") == 1, alone.stderr
    assert "nixpkgs' lib/ not found" in alone.stderr and "NIX_PATH" in alone.stderr

    env["NIX_PATH"] = f"nixpkgs={channel}"
    found = subprocess.run(
        [sys.executable, "tests/nixpkgs_lib.py", "--fetch"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and found.stdout == "", found
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "nixpkgs_lib and not cluster and not root",
            "tests/nix/test_nix.py",
            "tests/nix/test_flake_checks.py",
        ],
        cwd=clone,
        env={**env, "L3LB_REQUIRE_ALL": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-500:]
