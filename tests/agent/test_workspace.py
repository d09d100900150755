"""The workspace sandbox: escapes through `..`, absolute paths and symlinks; writes into .git/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.workspace import PathOutsideWorkspace, ProtectedPath, Workspace


@pytest.fixture
def ws(git_repo: Path, tmp_path: Path) -> Workspace:
    return Workspace(git_repo, output_dir=tmp_path / "out")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.txt").write_text("secret\n")
    return secret


def test_relative_and_absolute_paths_inside(ws: Workspace, git_repo: Path):
    assert ws.resolve("src/app.py") == git_repo / "src/app.py"
    assert ws.resolve(git_repo / "src/app.py") == git_repo / "src/app.py"
    assert ws.resolve("src/../README.md") == git_repo / "README.md"
    assert ws.resolve("new/dir/file.txt", write=True) == git_repo / "new/dir/file.txt"
    assert ws.relative(ws.resolve(".")) == "."


@pytest.mark.parametrize(
    "path", ["..", "../outside/secret.txt", "src/../../x", "/etc/passwd", "~/.ssh/id_rsa"]
)
def test_escapes_are_refused(ws: Workspace, path: str):
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        ws.resolve(path)
    with pytest.raises(PathOutsideWorkspace):
        ws.resolve(path, write=True)


def test_file_symlink_pointing_outside_is_refused(ws: Workspace, git_repo: Path, outside: Path):
    os.symlink(outside / "secret.txt", git_repo / "link.txt")
    os.symlink(outside / "missing.txt", git_repo / "dangling.txt")
    for name in ("link.txt", "dangling.txt"):
        with pytest.raises(PathOutsideWorkspace):
            ws.resolve(name)
        with pytest.raises(PathOutsideWorkspace):
            ws.resolve(name, write=True)


def test_directory_symlink_pointing_outside_is_refused(
    ws: Workspace, git_repo: Path, outside: Path
):
    os.symlink(outside, git_repo / "linkdir")
    for path in ("linkdir", "linkdir/secret.txt", "linkdir/new.txt", "src/../linkdir/x"):
        with pytest.raises(PathOutsideWorkspace):
            ws.resolve(path, write=True)


def test_symlink_inside_is_followed(ws: Workspace, git_repo: Path):
    os.symlink("src", git_repo / "code")
    assert ws.resolve("code/app.py", write=True) == git_repo / "src/app.py"


def test_writes_into_git_dirs_are_refused(ws: Workspace, git_repo: Path):
    assert ws.resolve(".git/config") == git_repo / ".git/config"  # reading is fine
    os.symlink(".git", git_repo / "gitlink")
    for path in (
        ".git/config",
        ".git/hooks/pre-commit",
        ".git",
        "vendor/lib/.git/HEAD",
        "gitlink/config",
        ".GIT/config",
    ):
        with pytest.raises(ProtectedPath, match=".git"):
            ws.resolve(path, write=True)


def test_output_dir_is_readable_not_writable(ws: Workspace):
    ws.output_dir.mkdir(parents=True)
    spilled = ws.output_dir / "shell-1.log"
    assert ws.resolve(spilled) == spilled
    with pytest.raises(PathOutsideWorkspace):
        ws.resolve(spilled, write=True)


def test_files_skip_git_and_ignored(ws: Workspace, git_repo: Path):
    (git_repo / "build").mkdir()
    (git_repo / "build/out.txt").write_text("x")
    (git_repo / "new.txt").write_text("untracked")
    assert ws.files() == [".gitignore", "README.md", "new.txt", "src/app.py", "src/util.py"]


def test_files_outside_git(tmp_path: Path):
    (tmp_path / "plain/.git").mkdir(parents=True)
    (tmp_path / "plain/.git/HEAD").write_text("x")
    (tmp_path / "plain/a.txt").write_text("a")
    ws = Workspace(tmp_path / "plain")
    assert not ws.is_git and ws.files() == ["a.txt"]
