"""write: new files with parent directories; overwrites only after a read."""

from __future__ import annotations

from pathlib import Path

from agent.tools.base import ToolContext, run_tool
from agent.tools.read import ReadTool
from agent.tools.write import WriteTool


def write(ctx: ToolContext, **args):
    return run_tool(WriteTool(), args, ctx)


def test_creates_file_and_parents(tool_ctx: ToolContext, git_repo: Path):
    result = write(tool_ctx, path="pkg/sub/mod.py", content="x = 1\ny = 2\n")
    assert result.ok and result.content == "Created pkg/sub/mod.py (2 lines)."
    assert (git_repo / "pkg/sub/mod.py").read_text() == "x = 1\ny = 2\n"
    assert result.metadata["diff"].startswith("--- /dev/null\n+++ b/pkg/sub/mod.py\n")
    # written by the model, so known to it: it may overwrite without reading
    assert write(tool_ctx, path="pkg/sub/mod.py", content="x = 3\n").ok


def test_overwrite_needs_a_read(tool_ctx: ToolContext, git_repo: Path):
    result = write(tool_ctx, path="README.md", content="new\n")
    assert not result.ok and "read it first, then write" in result.content
    assert (git_repo / "README.md").read_text() == "# demo\n"
    assert run_tool(ReadTool(), {"path": "README.md"}, tool_ctx).ok
    result = write(tool_ctx, path="README.md", content="new\n")
    assert result.ok and result.content.startswith("Overwrote README.md")
    assert "-# demo\n+new\n" in result.metadata["diff"]


def test_overwrite_of_a_file_changed_since_read_is_refused(tool_ctx: ToolContext, git_repo: Path):
    assert run_tool(ReadTool(), {"path": "README.md"}, tool_ctx).ok
    (git_repo / "README.md").write_text("# user edit\n")
    result = write(tool_ctx, path="README.md", content="model\n")
    assert not result.ok and "changed on disk" in result.content
    assert (git_repo / "README.md").read_text() == "# user edit\n"


def test_refused_targets(tool_ctx: ToolContext, git_repo: Path, tmp_path: Path):
    cases = {
        ".git/hooks/post-checkout": "inside .git/",
        "../evil.txt": "outside the workspace",
        str(tmp_path / "evil.txt"): "outside the workspace",
        "src": "is a directory",
    }
    for path, message in cases.items():
        result = write(tool_ctx, path=path, content="x")
        assert not result.ok and message in result.content, path
    assert not (git_repo / ".git/hooks/post-checkout").exists()
    assert not (tmp_path / "evil.txt").exists()
    (git_repo / "escape").symlink_to(tmp_path, target_is_directory=True)
    result = write(tool_ctx, path="escape/evil.txt", content="x")
    assert not result.ok and not (tmp_path / "evil.txt").exists()
