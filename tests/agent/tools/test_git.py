"""git: the allowed subcommands through GitPython; push, amend and --output refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.tools.base import ToolContext, run_tool
from agent.tools.git import GitTool


def git_tool(ctx: ToolContext, subcommand: str, *args: str, **extra):
    return run_tool(GitTool(), {"subcommand": subcommand, "args": list(args), **extra}, ctx)


def test_read_subcommands(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "README.md").write_text("# changed\n")
    status = git_tool(tool_ctx, "status", "--short")
    assert status.ok and status.content == " M README.md"
    diff = git_tool(tool_ctx, "diff")
    assert diff.ok and "-# demo\n+# changed" in diff.content
    log = git_tool(tool_ctx, "log", "--format=%s")
    assert log.ok and log.content == "initial"
    show = git_tool(tool_ctx, "show", "HEAD:src/util.py")
    assert show.ok and show.content.startswith("def helper")


def test_commit(tool_ctx: ToolContext, git_repo: Path, run_git):
    (git_repo / "README.md").write_text("# changed\n")
    result = git_tool(tool_ctx, "commit", "-a", message="Change the README")
    assert result.ok, result.content
    assert run_git(git_repo, "log", "-1", "--format=%s").strip() == "Change the README"
    nothing = git_tool(tool_ctx, "commit", message="empty")
    assert not nothing.ok and nothing.metadata["exit_code"] == 1
    (git_repo / "README.md").write_text("# again\n")
    assert git_tool(tool_ctx, "commit", "-am", "inline message").ok


@pytest.mark.parametrize(
    ("subcommand", "args", "message"),
    [
        ("push", [], "git push is not available"),
        ("reset", ["--hard"], "git reset is not available"),
        ("commit", ["--amend"], "git commit --amend is not allowed"),
        ("diff", ["--output=/tmp/x"], "git diff --output=/tmp/x is not allowed"),
        ("commit", ["-a"], "git commit needs a message"),
    ],
)
def test_refused(tool_ctx: ToolContext, git_repo: Path, run_git, subcommand, args, message):
    before = run_git(git_repo, "rev-parse", "HEAD")
    result = git_tool(tool_ctx, subcommand, *args)
    assert not result.ok and message in result.content
    assert run_git(git_repo, "rev-parse", "HEAD") == before


def test_kind_depends_on_subcommand():
    tool = GitTool()
    assert tool.kind_for({"subcommand": "status"}) == "read"
    assert tool.kind_for({"subcommand": "commit"}) == "exec"
    assert tool.kind_for({}) == "exec"


def test_not_a_repository(tmp_path: Path):
    from agent.workspace import Workspace

    plain = tmp_path / "plain"
    plain.mkdir()
    result = git_tool(ToolContext(Workspace(plain)), "status")
    assert not result.ok and "not a git repository" in result.content
