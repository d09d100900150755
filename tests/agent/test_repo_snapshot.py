"""The repository snapshot: git-history order, priorities, excerpts, the budget, the event."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.events import event_to_json
from agent.repo_snapshot import MAX_FILE_BYTES, take_snapshot


def count(text: str) -> int:
    return len(text.split())


def git(root: Path, *args: str, when: int | None = None) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)


def commit(root: Path, files: dict[str, str], when: int) -> None:
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
        os.utime(root / name, (5000, 5000))  # one mtime for all, as in a fresh clone
    git(root, "add", *files)
    git(root, "commit", "-qm", "c", when=when)


def make_repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    commit(tmp_path, {"old.py": "x = 1\n", ".gitignore": "ignored.txt\n"}, when=1_000_000)
    commit(tmp_path, {"mid.py": "y = 2\n"}, when=2_000_000)
    commit(tmp_path, {"new.py": "z = 3\n"}, when=3_000_000)
    (tmp_path / "ignored.txt").write_text("secret\n")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "big.log").write_text("a " * (MAX_FILE_BYTES // 2 + 1))
    return tmp_path


def paths(snap) -> list[str]:
    return [e.path for e in snap.included]


def test_order_follows_git_history_not_mtime(tmp_path):
    root = make_repo(tmp_path)
    os.utime(root / "old.py", (9000, 9000))  # touched, not changed: history still says old
    (root / "mid.py").write_text("y = 22\n")  # uncommitted: the newest of all
    snap = take_snapshot(root, count, budget=10_000)
    assert paths(snap) == [".gitignore", "old.py", "new.py", "mid.py"]
    assert snap.text.index("old.py") < snap.text.index("new.py") < snap.text.index("mid.py")
    assert "secret" not in snap.text
    assert {e.path: e.kind for e in snap.listed_only} == {"logo.png": "binary", "big.log": "huge"}
    assert "logo.png (binary" in snap.text


def test_budget_keeps_the_newest_and_counts_everything(tmp_path):
    root = make_repo(tmp_path)
    snap = take_snapshot(root, count, budget=40)
    assert "new.py" in paths(snap) and "old.py" not in paths(snap)
    assert "old.py" in {e.path for e in snap.left_out}
    assert snap.tokens == count(snap.text) <= 40
    assert "Left out over the token budget" in snap.text
    assert f"{len(snap.left_out)} left out" in snap.report()


def test_source_and_docs_before_metadata_and_generated(tmp_path):
    git(tmp_path, "init", "-q")
    meta = {"PKG-INFO": "Name: pkg\n" * 20, "pkg.egg-info/SOURCES.txt": "pkg.py\n" * 20,
            "poetry.lock": "lock\n" * 20, "vendor/lib.py": "v = 1\n" * 20,
            "LICENSE": "MIT\n" * 20}
    commit(tmp_path, {"pkg.py": "def f():\n    return 1\n" * 10,
                      "docs/guide.md": "how to use it\n" * 10}, when=1_000_000)
    commit(tmp_path, meta, when=2_000_000)  # newer, but metadata
    snap = take_snapshot(tmp_path, count, budget=150)
    assert set(paths(snap)) >= {"pkg.py", "docs/guide.md"}
    left = {e.path for e in snap.left_out}
    assert left and left <= set(meta)


def test_files_the_task_names_go_first(tmp_path):
    git(tmp_path, "init", "-q")
    commit(tmp_path, {"calc.py": "def add(a, b):\n    return a - b\n" * 5}, when=1_000_000)
    commit(tmp_path, {f"m{i}.py": "x = 1\n" * 12 for i in range(10)}, when=2_000_000)
    assert "calc.py" not in paths(take_snapshot(tmp_path, count, budget=120))
    snap = take_snapshot(tmp_path, count, budget=120, task="fix the wrong return in calc.py")
    assert "calc.py" in paths(snap)


def test_readme_always_and_a_named_definition_as_an_excerpt(tmp_path):
    git(tmp_path, "init", "-q")
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400))
    body += "def with_metaclass(meta, *bases):\n    return meta('x', bases, {})\n"
    commit(tmp_path, {"README.md": "word\n" * 5000, "six.py": body}, when=1_000_000)
    snap = take_snapshot(tmp_path, count, budget=400, task="what does with_metaclass do?")
    assert paths(snap) == ["README.md", "six.py"]
    assert snap.excerpts["six.py"].startswith("1201-")
    assert '<file path="six.py" lines="1201-1202 of 1202">' in snap.text
    assert "def with_metaclass(meta, *bases):" in snap.text and "def f3(" not in snap.text
    assert snap.excerpts["README.md"].startswith("1-")
    assert snap.whole() == []  # excerpts do not count as read
    assert snap.tokens <= 400


def test_snapshot_event_in_stream_json(tmp_path):
    snap = take_snapshot(make_repo(tmp_path), count, budget=40)
    event = event_to_json(snap.event())
    assert event["type"] == "snapshot"
    assert event["inlined"] == [e.path for e in snap.included]
    assert event["left_out_count"] == len(snap.left_out) and event["tokens"] == snap.tokens
    assert event["summary"] == snap.report()


def test_outside_git_walks_the_tree(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / ".git").mkdir()
    snap = take_snapshot(tmp_path, count, budget=100)
    assert paths(snap) == ["a.txt"]


def test_zero_budget_inlines_nothing(tmp_path):
    snap = take_snapshot(make_repo(tmp_path), count, budget=0)
    assert snap.text == "" and snap.included == [] and snap.tokens == 0
