"""Where the tests find nixpkgs' lib/ (the module evaluations run lib.evalModules with it), in this order:

1. ``$L3LB_NIXPKGS_LIB``;
2. ``../shared/nixpkgs-lib/lib`` beside the repository (this workplace and its CI);
3. ``<nixpkgs/lib>``: nixpkgs on ``$NIX_PATH`` (what ``nix-instantiate --find-file nixpkgs`` answers);
4. the nixpkgs that flake.lock pins, fetched once into ``~/.cache/l3lb/nixpkgs-<rev>`` and kept only if
   its NAR hash is the lock's narHash (setup does the fetching: ``python tests/nixpkgs_lib.py --fetch``).

Only when none of them is there does anything say so: one line that names all four.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
URL = "https://github.com/NixOS/nixpkgs/archive/{rev}.tar.gz"
"""Where flake.lock's nixpkgs is fetched from; ``$L3LB_NIXPKGS_URL`` (with ``{rev}``) points elsewhere."""


class NotFound(Exception):
    pass


def locked(repo: Path) -> dict[str, str]:
    return json.loads((repo / "flake.lock").read_text())["nodes"]["nixpkgs"]["locked"]


def cache(home: Path, repo: Path) -> Path | None:
    """Where flake.lock's nixpkgs is kept once fetched (None without a flake.lock: the package's sources)."""
    if not (repo / "flake.lock").is_file():
        return None
    return home / ".cache" / "l3lb" / f"nixpkgs-{locked(repo)['rev']}"


def find(
    *,
    repo: Path = REPO,
    env: Mapping[str, str] = os.environ,
    home: Path | None = None,
    fetch: bool = False,
    say=lambda _: None,  # type: ignore[no-untyped-def]
) -> Path:
    """The lib/ folder; NotFound with the one line when there is none (``fetch``: try 4 over the network)."""
    home = home or Path(env.get("HOME") or "/nonexistent")
    given = env.get("L3LB_NIXPKGS_LIB")
    if given:
        if (Path(given) / "default.nix").is_file():
            return Path(given)
        raise NotFound(f"L3LB_NIXPKGS_LIB={given} has no default.nix: point it at nixpkgs' lib/ folder")
    kept = cache(home, repo)
    for candidate in (
        repo.parent / "shared" / "nixpkgs-lib" / "lib",
        on_nix_path(env),
        kept / "lib" if kept else None,
    ):
        if candidate is not None and (candidate / "default.nix").is_file():
            return candidate
    why = "not fetched: setup fetches it"
    if fetch and kept is not None:
        try:
            return download(repo, home, env.get("L3LB_NIXPKGS_URL") or URL, say)
        except Exception as err:  # whatever it was, the one line says it
            why = f"fetching it failed: {err}"
    raise NotFound(
        "nixpkgs' lib/ not found: set L3LB_NIXPKGS_LIB=DIR, or put nixpkgs-lib at "
        f"{repo.parent / 'shared' / 'nixpkgs-lib' / 'lib'}, or put nixpkgs on NIX_PATH (nixpkgs=DIR), or let "
        f"make test fetch the nixpkgs of flake.lock into {kept} ({why})"
    )


def on_nix_path(env: Mapping[str, str]) -> Path | None:
    if not env.get("NIX_PATH") or shutil.which("nix-instantiate") is None:
        return None
    out = subprocess.run(
        ["nix-instantiate", "--find-file", "nixpkgs"], capture_output=True, text=True, env=dict(env)
    )
    return Path(out.stdout.strip()) / "lib" if out.returncode == 0 and out.stdout.strip() else None


def nar_hash(path: Path) -> str:
    """The SRI form of a tree's NAR hash, as flake.lock's narHash is written."""
    hexed = subprocess.run(
        ["nix-hash", "--type", "sha256", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return "sha256-" + base64.b64encode(bytes.fromhex(hexed)).decode()


def download(repo: Path, home: Path, url: str, say) -> Path:  # type: ignore[no-untyped-def]
    """Fetches flake.lock's nixpkgs, checks its narHash, keeps only lib/ (and the licence)."""
    lock = locked(repo)
    target = cache(home, repo)
    assert target is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    say(f"nixpkgs lib: fetching nixpkgs {lock['rev'][:12]} (flake.lock) ...")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        archive = Path(tmp) / "nixpkgs.tar.gz"
        with urllib.request.urlopen(url.format(rev=lock["rev"]), timeout=30) as resp, archive.open("wb") as f:
            shutil.copyfileobj(resp, f)
        with tarfile.open(archive) as tar:
            tar.extractall(
                Path(tmp) / "unpacked", **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {})
            )
        (top,) = (Path(tmp) / "unpacked").iterdir()  # GitHub's archives hold one folder
        got = nar_hash(top)
        if got != lock["narHash"]:
            raise ValueError(f"its NAR hash is {got}, flake.lock says {lock['narHash']}")
        kept = Path(tmp) / "kept"
        kept.mkdir()
        for name in ("lib", "COPYING"):
            if (top / name).exists():
                (top / name).rename(kept / name)
        kept.rename(target)
    say(f" {time.monotonic() - t0:.0f} s\n")
    return target / "lib"


if (
    __name__ == "__main__"
):  # setup/setup.sh: silent when lib/ is there, a line while fetching, else the one line
    try:
        find(
            fetch="--fetch" in sys.argv[1:],
            say=lambda text: print(
                f"setup: {text}" if text.strip() and not text.startswith(" ") else text, end="", flush=True
            ),
        )
    except NotFound as err:
        print(f"setup: {err}", file=sys.stderr)
        sys.exit(1)
