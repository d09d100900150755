"""edit: exact replacement after a read; unread, stale, missing and ambiguous edits refused."""

from __future__ import annotations

from pathlib import Path

from agent.tools.base import ToolContext, run_tool
from agent.tools.edit import EditTool
from agent.tools.read import ReadTool


def edit(ctx: ToolContext, **args):
    return run_tool(EditTool(), args, ctx)


def read(ctx: ToolContext, path: str):
    assert run_tool(ReadTool(), {"path": path}, ctx).ok


def test_edit_after_read_returns_a_diff(tool_ctx: ToolContext, git_repo: Path):
    read(tool_ctx, "src/util.py")
    result = edit(tool_ctx, path="src/util.py", old_string="x + 1", new_string="x + 2")
    assert result.ok
    assert (git_repo / "src/util.py").read_text() == "def helper(x):\n    return x + 2\n"
    diff = result.metadata["diff"]
    assert diff.startswith("--- a/src/util.py\n+++ b/src/util.py\n@@")
    assert "-    return x + 1\n+    return x + 2\n" in diff
    assert "Edited src/util.py (1 replacement)" in result.content
    # the model's own edit counts as seen: a second edit needs no new read
    assert edit(tool_ctx, path="src/util.py", old_string="x + 2", new_string="x + 3").ok


def test_edit_without_read_is_refused(tool_ctx: ToolContext, git_repo: Path):
    result = edit(tool_ctx, path="src/util.py", old_string="x + 1", new_string="x + 2")
    assert not result.ok and "has not been read yet; read it first" in result.content
    assert "x + 1" in (git_repo / "src/util.py").read_text()


def test_edit_of_a_file_changed_since_read_is_refused(tool_ctx: ToolContext, git_repo: Path):
    read(tool_ctx, "src/util.py")
    # same size, same second: only the content hash can tell
    (git_repo / "src/util.py").write_text("def helper(y):\n    return y + 1\n")
    result = edit(tool_ctx, path="src/util.py", old_string="+ 1", new_string="+ 2")
    assert not result.ok and "changed on disk since you last read it" in result.content
    read(tool_ctx, "src/util.py")
    assert edit(tool_ctx, path="src/util.py", old_string="+ 1", new_string="+ 2").ok


def test_old_string_not_found(tool_ctx: ToolContext):
    read(tool_ctx, "src/util.py")
    result = edit(tool_ctx, path="src/util.py", old_string="x + 9", new_string="x")
    assert not result.ok and "old_string not found in src/util.py" in result.content


def test_non_unique_old_string(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "dup.py").write_text("a = 1\nb = 1\nc = 1\n")
    read(tool_ctx, "dup.py")
    result = edit(tool_ctx, path="dup.py", old_string="= 1", new_string="= 2")
    assert not result.ok
    assert "occurs 3 times in dup.py; add surrounding context" in result.content
    assert "replace_all" in result.content
    unique = edit(tool_ctx, path="dup.py", old_string="b = 1", new_string="b = 2")
    assert unique.ok
    every = edit(tool_ctx, path="dup.py", old_string="= 1", new_string="= 3", replace_all=True)
    assert every.ok and every.metadata["replacements"] == 2
    assert (git_repo / "dup.py").read_text() == "a = 3\nb = 2\nc = 3\n"


def test_bad_edits(tool_ctx: ToolContext, git_repo: Path):
    read(tool_ctx, "src/util.py")
    same = edit(tool_ctx, path="src/util.py", old_string="x", new_string="x")
    assert not same.ok and "the same" in same.content
    empty = edit(tool_ctx, path="src/util.py", old_string="", new_string="x")
    assert not empty.ok and "empty" in empty.content
    missing = edit(tool_ctx, path="nope.py", old_string="a", new_string="b")
    assert not missing.ok and "use write to create" in missing.content


def test_crlf_file_keeps_its_line_endings(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "win.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    read(tool_ctx, "win.txt")
    result = edit(tool_ctx, path="win.txt", old_string="one\ntwo", new_string="1\n2")
    assert result.ok
    assert (git_repo / "win.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


def test_undecodable_bytes_survive(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "latin.txt").write_bytes(b"caf\xe9 = 1\n")
    read(tool_ctx, "latin.txt")
    assert edit(tool_ctx, path="latin.txt", old_string="= 1", new_string="= 2").ok
    assert (git_repo / "latin.txt").read_bytes() == b"caf\xe9 = 2\n"


def test_edits_into_git_and_outside_are_refused(
    tool_ctx: ToolContext, git_repo: Path, tmp_path: Path
):
    result = edit(tool_ctx, path=".git/config", old_string="bare", new_string="x")
    assert not result.ok and "inside .git/" in result.content
    (tmp_path / "outside.txt").write_text("a = 1\n")
    (git_repo / "link.txt").symlink_to(tmp_path / "outside.txt")
    for path in ("link.txt", "../outside.txt", str(tmp_path / "outside.txt")):
        result = edit(tool_ctx, path=path, old_string="1", new_string="2")
        assert not result.ok and "outside the workspace" in result.content
    assert (tmp_path / "outside.txt").read_text() == "a = 1\n"
