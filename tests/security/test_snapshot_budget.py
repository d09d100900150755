"""The snapshot's listings count against its budget (issue 11: a 20,000-file repo must start)."""

from __future__ import annotations

import subprocess
import time

from agent.repo_snapshot import take_snapshot
from agent.session import snapshot_budget


def count(text: str) -> int:
    return max(1, len(text) // 3)  # paths tokenize densely: a pessimistic count


def test_twenty_thousand_files_fit_an_8k_window(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for d in range(40):
        (tmp_path / f"pkg{d}").mkdir()
    for i in range(20_000):
        (tmp_path / f"pkg{i % 40}" / f"module_number_{i}.py").write_text(f"v = {i}\n")
    budget = snapshot_budget(8192, reply_room=512, fixed=100)  # at most half: 4096
    start = time.perf_counter()
    snap = take_snapshot(tmp_path, count, budget)
    assert time.perf_counter() - start < 30
    assert snap.tokens == count(snap.text) <= budget == 4096
    assert len(snap.included) + len(snap.left_out) == 20_000
    assert "20000 files" not in snap.text or "pkg" in snap.text
    assert f"{len(snap.left_out)} files" in snap.text  # summarised, still counted
    event = snap.event()
    assert event.left_out_count == len(snap.left_out) and len(event.left_out) <= 1000


def test_denied_paths_are_neither_read_nor_listed(tmp_path):
    (tmp_path / ".env").write_text("API_KEY=hunter2\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    snap = take_snapshot(tmp_path, count, 1000, may_read=lambda p: not p.endswith(".env"))
    assert "hunter2" not in snap.text and ".env" not in snap.text
    assert [e.path for e in snap.included] == ["app.py"]
