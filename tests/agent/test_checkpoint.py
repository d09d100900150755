"""Checkpoints: whole-worktree snapshots and exact restores that leave HEAD and the index alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.checkpoint import (
    LEGACY_PREFIX,
    REF_PREFIX,
    CheckpointError,
    Checkpoints,
    in_git_repository,
)
from agent.tools.base import ToolContext, run_tool
from agent.tools.shell import JobTable, ShellTool


def tree_state(root: Path) -> dict[str, str]:
    """Every non-.git path under root: file contents, symlink targets, exec bits."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[rel] = "-> " + os.readlink(path)
            else:
                state[rel] = path.read_text() + ("[x]" if os.access(path, os.X_OK) else "")
    return state


def test_round_trip_covers_shell_changes(git_repo: Path, tool_ctx: ToolContext, run_git):
    (git_repo / "wip.txt").write_text("untracked before\n")
    head, status = run_git(git_repo, "rev-parse", "HEAD"), run_git(git_repo, "status", "-s")
    checkpoints = Checkpoints(git_repo, "s1")
    first = checkpoints.create(1)
    before = tree_state(git_repo)
    script = (
        "echo changed > README.md && rm src/util.py && mkdir -p new/deep && "
        "echo n > new/deep/file.txt && rm wip.txt && echo more >> debug.log && "
        "chmod +x src/app.py && ln -s README.md alias"
    )
    result = run_tool(ShellTool(JobTable()), {"command": script}, tool_ctx)
    assert result.ok, result.content
    pending = checkpoints.changed_since(1)
    changed = checkpoints.restore(first)
    assert pending == changed
    assert changed == [
        "README.md",
        "alias",
        "new/deep/file.txt",
        "src/app.py",
        "src/util.py",
        "wip.txt",
    ]
    after = tree_state(git_repo)
    assert after.pop("debug.log") == "ignored\nmore\n"  # ignored files are left alone
    before.pop("debug.log")
    assert after == before
    assert not (git_repo / "new").exists()  # emptied directories go too
    assert run_git(git_repo, "rev-parse", "HEAD") == head
    assert run_git(git_repo, "status", "-s") == status
    assert checkpoints.changed_since(first) == []


def test_user_index_and_branch_untouched(git_repo: Path, run_git):
    (git_repo / "README.md").write_text("staged\n")
    run_git(git_repo, "add", "README.md")
    (git_repo / "README.md").write_text("staged then edited\n")
    index = (git_repo / ".git/index").read_bytes()
    checkpoints = Checkpoints(git_repo, "s1")
    checkpoint = checkpoints.create(0)
    assert (git_repo / ".git/index").read_bytes() == index
    (git_repo / "README.md").write_text("agent edit\n")
    checkpoints.restore(0)
    assert (git_repo / "README.md").read_text() == "staged then edited\n"
    assert run_git(git_repo, "diff", "--cached", "--name-only") == "README.md\n"
    assert run_git(git_repo, "show", ":README.md") == "staged\n"
    assert run_git(git_repo, "stash", "list") == ""
    assert run_git(git_repo, "branch", "--format=%(refname:short)") == "main\n"
    store = f"--git-dir={checkpoints.store}"
    assert run_git(git_repo, store, "rev-parse", f"{checkpoint.commit}^") == run_git(
        git_repo, "rev-parse", "HEAD"
    )


def test_restore_to_an_earlier_turn(git_repo: Path):
    checkpoints = Checkpoints(git_repo, "s1")
    for turn in range(3):
        (git_repo / "counter.txt").write_text(f"{turn}\n")
        (git_repo / f"turn{turn}.txt").write_text("x")
        checkpoints.create(turn)
    checkpoints.restore(1)
    assert (git_repo / "counter.txt").read_text() == "1\n"
    assert (git_repo / "turn1.txt").exists() and not (git_repo / "turn2.txt").exists()
    checkpoints.restore(2)
    assert (git_repo / "turn2.txt").exists()


def test_list_and_delete(git_repo: Path, run_git):
    ours, theirs = Checkpoints(git_repo, "s1"), Checkpoints(git_repo, "s2")
    for turn in (2, 10, 1):
        ours.create(turn)
    theirs.create(1)
    assert [c.turn for c in ours.list()] == [1, 2, 10]
    assert ours.get(10).ref == f"{REF_PREFIX}/s1/10"
    assert ours.delete(2) == 1 and [c.turn for c in ours.list()] == [1, 10]
    assert ours.delete() == 2 and ours.list() == []
    assert [c.turn for c in theirs.list()] == [1]
    with pytest.raises(CheckpointError, match="no checkpoint for turn 3"):
        ours.restore(3)
    assert "refs/heads/main" in run_git(git_repo, "for-each-ref", "--format=%(refname)")


def test_repository_without_commits(tmp_path: Path, run_git):
    repo = tmp_path / "fresh"
    repo.mkdir()
    run_git(repo, "init", "-q")
    (repo / "a.txt").write_text("a\n")
    checkpoints = Checkpoints(repo, "s1")
    checkpoint = checkpoints.create(0)
    (repo / "a.txt").write_text("changed\n")
    (repo / "b.txt").write_text("b\n")
    checkpoints.restore(checkpoint)
    assert tree_state(repo) == {"a.txt": "a\n"}
    assert run_git(repo, "status", "--porcelain") == "?? a.txt\n"


def test_bad_input(tmp_path: Path, git_repo: Path):
    with pytest.raises(CheckpointError, match="not in a git repository"):
        Checkpoints(tmp_path, "s1")
    for session in ("", "a/b", "a..b", "x.lock", "-x"):
        with pytest.raises(CheckpointError, match="bad session id"):
            Checkpoints(git_repo, session)
    with pytest.raises(CheckpointError, match="turn must be"):
        Checkpoints(git_repo, "s1").create(-1)


def test_checkpoints_stay_out_of_the_users_history(git_repo: Path, run_git):
    """`git log --all`, the refs and gc's reachability never see them; they live in a store
    inside .git that borrows the repository's objects."""
    before = run_git(git_repo, "log", "--all", "--oneline")
    (git_repo / "new.txt").write_text("a file only the checkpoint holds\n")
    checkpoints = Checkpoints(git_repo, "s1")
    mark = checkpoints.create(1)
    assert run_git(git_repo, "log", "--all", "--oneline") == before
    assert "checkpoint" not in run_git(git_repo, "for-each-ref")
    run_git(git_repo, "gc", "--prune=now", "-q")
    (git_repo / "new.txt").unlink()
    checkpoints.restore(1)
    assert (git_repo / "new.txt").read_text() == "a file only the checkpoint holds\n"
    assert mark.ref.startswith("refs/checkpoints/s1/")
    assert checkpoints.store.is_relative_to(git_repo / ".git")


def test_checkpoints_an_older_agent_kept_in_the_repository_still_work(git_repo: Path, run_git):
    old = Checkpoints(git_repo, "s1")
    (git_repo / "README.md").write_text("at turn 1\n")
    run_git(git_repo, "add", "README.md")
    tree = run_git(git_repo, "write-tree").strip()
    commit = run_git(git_repo, "commit-tree", tree, "-m", "old checkpoint").strip()
    run_git(git_repo, "update-ref", f"{LEGACY_PREFIX}/s1/1", commit)
    (git_repo / "README.md").write_text("later\n")
    assert [(c.turn, c.legacy) for c in old.list()] == [(1, True)]
    old.restore(1)
    assert (git_repo / "README.md").read_text() == "at turn 1\n"
    assert old.delete(everything=True) == 2  # the old turn and the new undo point
    assert run_git(git_repo, "for-each-ref", LEGACY_PREFIX) == ""


def test_in_git_repository(git_repo: Path, tmp_path: Path):
    (tmp_path / "plain").mkdir()
    assert in_git_repository(git_repo / "src") and not in_git_repository(tmp_path / "plain")
