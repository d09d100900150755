"""The snapshot never follows a link out of the repository (issue 11: reads outside)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.repo_files import read_inside
from agent.repo_snapshot import take_snapshot

SECRET = "TOP-SECRET-OUTSIDE-CONTENT"


def count(text: str) -> int:
    return len(text.split())


def repo_with_links(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "app.py").write_text("print('hi')\n")
    (root / "inner.txt").write_text("inner\n")
    os.symlink(outside / "secret.txt", root / "leak.txt")  # a committed link to a file
    os.symlink(outside, root / "leakdir")  # and to a folder
    os.symlink("inner.txt", root / "alias.txt")  # inside, but still a link
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


@pytest.mark.parametrize("use_git", [True, False])
def test_committed_links_are_listed_never_read(tmp_path, use_git):
    root = repo_with_links(tmp_path)
    if not use_git:
        subprocess.run(["rm", "-rf", str(root / ".git")], check=True)
    snap = take_snapshot(root, count, budget=10_000)
    assert SECRET not in snap.text
    assert {e.path for e in snap.included} == {"app.py", "inner.txt"}
    kinds = {e.path: e.kind for e in snap.listed_only}
    assert kinds.get("leak.txt") == "link" and kinds.get("alias.txt") == "link"
    assert SECRET not in repr(snap.event())


def test_a_folder_swapped_for_a_link_after_listing_is_not_followed(tmp_path):
    root = repo_with_links(tmp_path)
    (root / "pkg").mkdir()
    (root / "pkg" / "secret.txt").write_text("inside\n")
    assert read_inside(root, "pkg/secret.txt") == b"inside\n"
    os.rename(root / "pkg", root / "pkg.old")
    os.symlink(tmp_path / "outside", root / "pkg")  # the race: same name, now a link out
    with pytest.raises(OSError):
        read_inside(root, "pkg/secret.txt")
    os.unlink(root / "pkg")
    os.unlink(root / "app.py")
    os.symlink(tmp_path / "outside" / "secret.txt", root / "app.py")
    with pytest.raises(OSError):
        read_inside(root, "app.py")


def test_dot_dot_and_absolute_parts_are_refused(tmp_path):
    root = repo_with_links(tmp_path)
    for bad in ("../outside/secret.txt", "./../outside/secret.txt"):
        with pytest.raises(OSError):
            read_inside(root, bad)
