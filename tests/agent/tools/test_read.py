"""read: numbered lines, paging, long lines, binary and missing files, directories, escapes."""

from __future__ import annotations

from pathlib import Path

from agent.tools.base import ToolContext, run_tool
from agent.tools.read import ReadTool


def read(ctx: ToolContext, **args):
    return run_tool(ReadTool(), args, ctx)


def test_numbered_lines_and_records_the_file(tool_ctx: ToolContext, git_repo: Path):
    result = read(tool_ctx, path="src/util.py")
    assert result.ok
    assert result.content == "     1\tdef helper(x):\n     2\t    return x + 1"
    assert tool_ctx.files.get(git_repo / "src/util.py") is not None


def test_offset_and_limit(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "long.txt").write_text("".join(f"line {i}\n" for i in range(1, 3001)))
    first = read(tool_ctx, path="long.txt")
    assert first.content.splitlines()[1999] == "  2000\tline 2000"
    assert "long.txt has 3000 lines; showed 1-2000; use offset=2001" in first.content
    page = read(tool_ctx, path="long.txt", offset=2999, limit=5)
    assert page.content == "  2999\tline 2999\n  3000\tline 3000"
    past = read(tool_ctx, path="long.txt", offset=4000)
    assert not past.ok and "past the end" in past.content


def test_long_lines_are_cut(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "wide.txt").write_text("x" * 5000 + "\r\nshort\r\n")
    lines = read(tool_ctx, path="wide.txt").content.splitlines()
    assert lines[0] == "     1\t" + "x" * 2000 + "... [line cut, 3,000 more chars]"
    assert lines[1] == "     2\tshort"


def test_binary_file_is_refused(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0data")
    result = read(tool_ctx, path="blob.bin")
    assert not result.ok and "binary file" in result.content


def test_missing_file_suggests_close_names(tool_ctx: ToolContext):
    result = read(tool_ctx, path="src/ap.py")
    assert not result.ok
    assert result.content.startswith("file not found: src/ap.py; did you mean src/app.py")
    elsewhere = read(tool_ctx, path="lib/util.py")
    assert "did you mean src/util.py" in elsewhere.content


def test_directory_is_listed(tool_ctx: ToolContext):
    result = read(tool_ctx, path="src")
    assert result.ok and result.content == "src/ is a directory:\napp.py\nutil.py"


def test_empty_file_and_non_utf8(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "empty.txt").write_text("")
    assert read(tool_ctx, path="empty.txt").content == "(empty.txt is empty)"
    (git_repo / "latin.txt").write_bytes(b"caf\xe9\n")
    assert read(tool_ctx, path="latin.txt").content == "     1\tcaf\ufffd"


def test_escapes_are_tool_errors(tool_ctx: ToolContext, git_repo: Path, tmp_path: Path):
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    (git_repo / "link").symlink_to(tmp_path / "secret.txt")
    for path in ("../secret.txt", str(tmp_path / "secret.txt"), "link"):
        result = read(tool_ctx, path=path)
        assert not result.ok and "outside the workspace" in result.content
        assert "TOPSECRET" not in result.content
