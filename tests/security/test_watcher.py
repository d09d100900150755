"""The file watcher survives a file name that is not UTF-8: it restarts, and when it keeps
failing it degrades (one warning) to diffing the whole worktree each turn."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

import agent.external_changes as external_changes
from agent.external_changes import ExternalChanges
from tests.security.attack_repo import make_repo


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_changes_after_a_non_utf8_name_are_still_noticed(tmp_path: Path):
    repo = make_repo(tmp_path)
    watcher = ExternalChanges(repo, "s1")
    watcher.start()
    try:
        time.sleep(0.3)
        with open(os.fsencode(repo) + b"/bad\xff.txt", "wb") as f:
            f.write(b"x\n")
        time.sleep(0.8)
        (repo / "README.md").write_text("# changed outside\n")
        assert _wait_for(lambda: watcher._dirty)
        note = watcher.note()
        assert note is not None and "changed outside" in note
        assert watcher._thread.is_alive() or watcher.degraded
    finally:
        watcher.stop()


def test_a_watcher_that_keeps_failing_degrades_with_one_warning(tmp_path: Path, monkeypatch,
                                                                caplog: pytest.LogCaptureFixture):
    import watchfiles

    def broken_watch(*args, **kwargs):
        raise RuntimeError("Unable to decode path")
        yield  # pragma: no cover

    monkeypatch.setattr(watchfiles, "watch", broken_watch)
    monkeypatch.setattr(external_changes, "RESTART_DELAY_S", 0.01)
    repo = make_repo(tmp_path)
    watcher = ExternalChanges(repo, "s2")
    with caplog.at_level(logging.INFO, logger="agent.external_changes"):
        watcher.start()
        assert _wait_for(lambda: watcher.degraded)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "whole worktree" in warnings[0].getMessage()
    assert watcher.note() is None  # nothing changed yet
    (repo / "README.md").write_text("# edited while degraded\n")
    note = watcher.note()
    assert note is not None and "edited while degraded" in note
