"""grep and glob: ignored, binary and .git files skipped; globs; caps; symlinks not followed out."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.tools.base import ToolContext, run_tool
from agent.tools.glob import GlobTool, glob_to_regex
from agent.tools.grep import GrepTool


def grep(ctx: ToolContext, **args):
    return run_tool(GrepTool(), args, ctx)


def glob(ctx: ToolContext, **args):
    return run_tool(GlobTool(), args, ctx)


def test_grep_finds_lines_and_skips_ignored_binary_and_git(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "debug.log").write_text("def ignored():\n")
    (git_repo / "blob.bin").write_bytes(b"\0def binary")
    (git_repo / "new.py").write_text("x = 1\ndef fresh():\n")
    result = grep(tool_ctx, pattern=r"^def \w+")
    assert result.ok
    assert result.content.splitlines() == [
        "new.py:2:def fresh():",
        "src/app.py:1:def main():",
        "src/util.py:1:def helper(x):",
    ]


def test_grep_options(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "notes.md").write_text("DEF upper\n")
    assert grep(tool_ctx, pattern="def upper").content.startswith("No matches")
    assert grep(tool_ctx, pattern="def upper", ignore_case=True).content == "notes.md:1:DEF upper"
    assert grep(tool_ctx, pattern="def", glob="*.py", path="src").content.count("\n") == 1
    assert grep(tool_ctx, pattern="def", path="src/util.py").content.startswith("src/util.py:1:")
    assert "src/app.py" not in grep(tool_ctx, pattern="def", glob="src/u*.py").content


def test_grep_caps_results(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "many.txt").write_text("hit\n" * 500)
    result = grep(tool_ctx, pattern="hit", max_results=10)
    assert result.content.count("many.txt:") == 10
    assert "stopped at 10 matches" in result.content


def test_grep_bad_input(tool_ctx: ToolContext):
    bad = grep(tool_ctx, pattern="(unclosed")
    assert not bad.ok and "invalid regular expression" in bad.content
    assert "path not found" in grep(tool_ctx, pattern="x", path="nowhere").content
    assert "outside the workspace" in grep(tool_ctx, pattern="x", path="..").content


def test_grep_does_not_follow_symlinks_out(tool_ctx: ToolContext, git_repo: Path, tmp_path: Path):
    (tmp_path / "secret.txt").write_text("TOPSECRET\n")
    (git_repo / "leak.txt").symlink_to(tmp_path / "secret.txt")
    result = grep(tool_ctx, pattern="TOP.ECRET")
    assert result.ok and "leak.txt" not in result.content and "TOPSECRET" not in result.content


def test_glob_newest_first_without_ignored(tool_ctx: ToolContext, git_repo: Path):
    (git_repo / "build").mkdir()
    (git_repo / "build/gen.py").write_text("")
    past = time.time() - 100
    os.utime(git_repo / "src/app.py", (past, past))
    result = glob(tool_ctx, pattern="**/*.py")
    assert result.content.splitlines() == ["src/util.py", "src/app.py"]
    assert glob(tool_ctx, pattern="*.py").content.startswith("No files match")
    assert glob(tool_ctx, pattern="*.py", path="src").metadata["count"] == 2
    assert glob(tool_ctx, pattern="{README,.gitignore}*").metadata["count"] == 2


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("**/*.py", "a.py", True),
        ("**/*.py", "a/b/c.py", True),
        ("*.py", "a/b.py", False),
        ("src/**", "src/a/b", True),
        ("src/*.{ts,tsx}", "src/x.tsx", True),
        ("src/*.{ts,tsx}", "src/x.js", False),
        ("test_?.py", "test_1.py", True),
        ("[!a]*.txt", "b.txt", True),
        ("[!a]*.txt", "a.txt", False),
        ("a+b.txt", "a+b.txt", True),
        ("src/**/test_*.py", "src/test_x.py", True),
    ],
)
def test_glob_to_regex(pattern: str, path: str, hit: bool):
    assert (glob_to_regex(pattern).fullmatch(path) is not None) == hit
