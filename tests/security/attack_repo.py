"""Helpers for the security tests: a real throwaway git repository and a tool context on it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.tools.base import ToolContext
from agent.workspace import Workspace


def git(repo: Path, *args: str) -> str:
    """Run git in `repo`; fail on error; stdout."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def make_repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository under tmp_path/repo holding `files` (default: README.md, src/app.py)
    in one commit, with a local identity."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for key, value in (("user.name", "T"), ("user.email", "t@example.com"),
                       ("commit.gpgsign", "false")):
        git(repo, "config", key, value)
    for name, text in (files or {"README.md": "# demo\n", "src/app.py": "x = 1\n"}).items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def context(repo: Path) -> ToolContext:
    """A tool context on `repo` with its own private output directory."""
    return ToolContext(Workspace(repo))
