"""The repository snapshot: order, binary and huge files, the token budget."""

from __future__ import annotations

import os
import subprocess

from agent.repo_snapshot import MAX_FILE_BYTES, take_snapshot


def count(text: str) -> int:
    return len(text.split())


def make_repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("ignored.txt\n")
    files = {"old.py": "x = 1\n", "mid.py": "y = 2\n", "new.py": "z = 3\n"}
    for i, (name, body) in enumerate(files.items()):
        (tmp_path / name).write_text(body)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    os.utime(tmp_path / ".gitignore", (900, 900))
    (tmp_path / "ignored.txt").write_text("secret\n")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "big.log").write_text("a" * (MAX_FILE_BYTES + 1))
    return tmp_path


def test_order_least_to_most_recent_and_listing(tmp_path):
    snap = take_snapshot(make_repo(tmp_path), count, budget=10_000)
    assert [e.path for e in snap.included] == [".gitignore", "old.py", "mid.py", "new.py"]
    assert snap.text.index("old.py") < snap.text.index("mid.py") < snap.text.index("new.py")
    assert "secret" not in snap.text
    assert {e.path: e.kind for e in snap.listed_only} == {"logo.png": "binary", "big.log": "huge"}
    assert "logo.png (binary" in snap.text


def test_budget_keeps_the_newest_and_reports_the_rest(tmp_path):
    snap = take_snapshot(make_repo(tmp_path), count, budget=12)
    assert [e.path for e in snap.included] == ["mid.py", "new.py"]
    assert {e.path for e in snap.left_out} == {".gitignore", "old.py"}
    assert "Left out over the token budget" in snap.text
    assert "2 left out" in snap.report()


def test_outside_git_walks_the_tree(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / ".git").mkdir()
    snap = take_snapshot(tmp_path, count, budget=100)
    assert [e.path for e in snap.included] == ["a.txt"]
