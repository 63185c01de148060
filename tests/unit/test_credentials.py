"""Key material in memory files: readable by this process through /proc/self/fd, on no file system."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from l3lb.k8s import api as kube


def test_a_memory_file_reads_as_its_content_and_is_reused() -> None:
    path = kube.memory_file(b"-----BEGIN KEY-----\nsecret one\n")
    assert Path(path).read_bytes() == b"-----BEGIN KEY-----\nsecret one\n"
    assert os.readlink(path).startswith("/memfd:l3lb-credential")
    assert kube.memory_file(b"-----BEGIN KEY-----\nsecret one\n") == path, "the same content, the same file"


def test_without_memfd_an_unlinked_file_in_a_private_folder_that_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refused(name: str, flags: int = 0) -> int:
        raise OSError(errno.EPERM, "memfd_create refused by a seccomp filter")

    monkeypatch.setattr(os, "memfd_create", refused)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(kube.tempfile, "tempdir", None)  # re-read TMPDIR
    path = kube.memory_file(b"secret two")
    assert Path(path).read_bytes() == b"secret two"
    assert os.readlink(path).endswith("(deleted)") or "#" in os.readlink(path), os.readlink(path)
    assert list(tmp_path.iterdir()) == [], "the private folder is removed at once, and no file has a name"
