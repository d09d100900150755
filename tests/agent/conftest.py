"""Fixtures for the agent's tools: a real throwaway git repository and a tool context on it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.tools.base import ToolContext
from agent.workspace import Workspace


def git(repo: Path, *args: str) -> str:
    """Run git in `repo`; fail the test on error; stdout."""
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A git repository with an initial commit: README.md, src/app.py, src/util.py, a .gitignore
    for `*.log` and `build/`, plus an ignored `debug.log`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "commit.gpgsign", "false")
    files = {
        "README.md": "# demo\n",
        ".gitignore": "*.log\nbuild/\n",
        "src/app.py": "def main():\n    return 1\n\n\nif __name__ == '__main__':\n    main()\n",
        "src/util.py": "def helper(x):\n    return x + 1\n",
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    (repo / "debug.log").write_text("ignored\n")
    return repo


@pytest.fixture
def tool_ctx(git_repo: Path, tmp_path: Path) -> ToolContext:
    """A tool context on `git_repo`, spilling long outputs into tmp_path/out."""
    return ToolContext(Workspace(git_repo, output_dir=tmp_path / "out"))


@pytest.fixture
def run_git():
    """`run_git(repo, *args) -> stdout`: git in a repository, failing the test on error."""
    return git
