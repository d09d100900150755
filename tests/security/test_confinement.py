"""Confinement by file descriptor: races that swap a directory or a name for a symlink, hard
links, the spooled-output directory, and hook directories named by core.hooksPath."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from agent.permissions import Permissions
from agent.tools import run_tool
from agent.tools.edit import EditTool
from agent.tools.read import ReadTool
from agent.tools.write import WriteTool
from agent.workspace import PathChanged, ProtectedPath, Workspace
from tests.security.attack_repo import context, git, make_repo


def test_a_directory_swapped_for_a_symlink_never_lets_a_write_out(tmp_path: Path):
    repo = make_repo(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    ctx = context(repo)
    stop = threading.Event()

    def flip() -> None:  # d: a real directory, then a symlink to outside, and back
        d, kept = repo / "d", repo / "d.real"
        d.mkdir()
        n = 0
        while not stop.is_set():
            try:
                os.rename(d, kept)
                os.symlink(outside, d)
                os.unlink(d)
                os.rename(kept, d)
            except OSError:  # the write tool made a fresh d/ in a gap: put it aside
                n += 1
                if os.path.islink(d):
                    os.unlink(d)
                if kept.exists():
                    if d.exists():
                        os.rename(d, repo / f"d.made{n}")
                    os.rename(kept, d)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        results = [run_tool(WriteTool(), {"path": f"d/f{i}.txt", "content": "x"}, ctx)
                   for i in range(300)]
    finally:
        stop.set()
        flipper.join()
    assert list(outside.iterdir()) == []
    assert any(r.ok for r in results)  # the race was run: some writes landed inside


def test_a_name_turned_into_a_symlink_after_the_check_is_not_followed(tmp_path: Path):
    repo = make_repo(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    ws = Workspace(repo)
    real = ws.resolve("victim.txt", write=True)  # the check passes: a plain new file
    os.symlink(secret, repo / "victim.txt")  # then the name becomes a link outside
    with pytest.raises(PathChanged):
        ws.write_bytes(real, b"pwned\n")
    assert secret.read_text() == "secret\n"
    parent = ws.resolve("sub/file.txt", write=True)
    os.symlink(tmp_path, repo / "sub")  # a parent directory swapped for a link
    with pytest.raises(PathChanged):
        ws.write_bytes(parent, b"pwned\n")
    with pytest.raises(PathChanged):
        ws.read_bytes(ws.root / "sub" / "secret.txt")
    assert not (tmp_path / "file.txt").exists()


def test_an_edit_through_a_hard_link_is_refused(tmp_path: Path):
    repo = make_repo(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    os.link(outside, repo / "linked.txt")
    ctx = context(repo)
    assert run_tool(ReadTool(), {"path": "linked.txt"}, ctx).ok
    result = run_tool(EditTool(), {"path": "linked.txt", "old_string": "keep", "new_string": "x"},
                      ctx)
    assert not result.ok and "hard link" in result.content
    result = run_tool(WriteTool(), {"path": "linked.txt", "content": "x"}, ctx)
    assert not result.ok and "hard link" in result.content
    assert outside.read_text() == "keep me\n"


def test_writes_keep_the_file_mode_and_leave_no_temporary_files(tmp_path: Path):
    repo = make_repo(tmp_path, {"run.sh": "echo hi\n"})
    os.chmod(repo / "run.sh", 0o755)
    ctx = context(repo)
    run_tool(ReadTool(), {"path": "run.sh"}, ctx)
    assert run_tool(EditTool(), {"path": "run.sh", "old_string": "hi", "new_string": "ho"},
                    ctx).ok
    assert stat.S_IMODE((repo / "run.sh").stat().st_mode) == 0o755
    assert (repo / "run.sh").read_text() == "echo ho\n"
    assert sorted(p.name for p in repo.iterdir()) == [".git", "run.sh"]


def test_the_output_directory_is_private_and_unpredictable(tmp_path: Path):
    repo = make_repo(tmp_path)
    a, b = Workspace(repo), Workspace(repo)
    assert a.output_dir != b.output_dir
    for ws in (a, b):
        assert stat.S_IMODE(ws.output_dir.stat().st_mode) == 0o700
        assert ws.output_dir.owner() == Path.home().owner() or os.getuid() == ws.output_dir.stat(
        ).st_uid


def test_the_hooks_directory_of_core_hooks_path_is_protected(tmp_path: Path):
    repo = make_repo(tmp_path, {".husky/pre-commit": "npm test\n", "README.md": "x\n"})
    git(repo, "config", "core.hooksPath", ".husky")
    ctx = context(repo)
    perms = Permissions("accept-edits", root=repo)
    args = {"path": ".husky/pre-commit", "content": "touch pwned\n"}
    assert perms.check("write", args).action == "allow"  # the mode allows edits...
    run_tool(ReadTool(), {"path": ".husky/pre-commit"}, ctx)
    result = run_tool(WriteTool(), args, ctx)  # ...but the workspace refuses this one
    assert not result.ok and "hooks" in result.content
    result = run_tool(WriteTool(), {"path": ".husky/new-hook", "content": "x"}, ctx)
    assert not result.ok
    assert (repo / ".husky/pre-commit").read_text() == "npm test\n"
    with pytest.raises(ProtectedPath):
        ctx.workspace.resolve("./.husky/../.husky/pre-commit", write=True)
    assert run_tool(WriteTool(), {"path": "src/ok.py", "content": "x = 1\n"}, ctx).ok


@pytest.mark.parametrize("spelling", [".git/config", ".GIT/config", "./.git/hooks/pre-commit",
                                      "src/../.git/HEAD", "sub/.git/x"])
def test_git_dir_writes_stay_refused(tmp_path: Path, spelling: str):
    ctx = context(make_repo(tmp_path))
    result = run_tool(WriteTool(), {"path": spelling, "content": "x"}, ctx)
    assert not result.ok and ".git" in result.content
