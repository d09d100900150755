"""Rewind keeps work: a safety checkpoint before every restore (`agent rewind --undo`), nothing
touched outside the session's folder, oversized and ignored untracked files neither stored nor
lost, and checkpoint refs deleted with the session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import agent.checkpoint as checkpoint
from agent.checkpoint import REF_PREFIX, Checkpoints
from cli import main
from memory.store import SessionStore
from tests.security.attack_repo import git, make_repo


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch) -> Path:

    monkeypatch.setenv("AGENT_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"


def session_at(data_dir: Path, root: Path, turn: int = 1) -> str:
    """A stored session on `root` with a checkpoint of the worktree as it is now at `turn`."""
    store = SessionStore(data_dir)
    info = store.create_session(str(root), "smollm2", "fp", "task")
    mark = Checkpoints(root, info.id).create(turn)
    store.add_checkpoint(info.id, turn, mark.commit, mark.ref)
    store.close()
    return info.id


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


def refs(repo: Path) -> list[str]:
    store = f"--git-dir={Checkpoints(repo, 'any').store}"
    return git(repo, store, "for-each-ref", "--format=%(refname)", REF_PREFIX).split()


def ls_tree(repo: Path, commit: str) -> list[str]:
    store = f"--git-dir={Checkpoints(repo, 'any').store}"
    return git(repo, store, "ls-tree", "-r", "--name-only", commit).split()


def test_a_rewind_can_be_undone_with_the_work_it_replaced(tmp_path, data_dir, capsys):
    repo = make_repo(tmp_path)
    sid = session_at(data_dir, repo)
    (repo / "notes.txt").write_text("untracked work\n")
    (repo / "README.md").write_text("unstaged edit\n")
    code, out = cli(capsys, "rewind", sid, "1")
    assert code == 0 and "--undo" in out
    assert not (repo / "notes.txt").exists() and (repo / "README.md").read_text() == "# demo\n"
    code, out = cli(capsys, "rewind", sid, "--undo")
    assert code == 0, out
    assert (repo / "notes.txt").read_text() == "untracked work\n"
    assert (repo / "README.md").read_text() == "unstaged edit\n"
    code, out = cli(capsys, "rewind", sid, "--undo")  # undo of the undo: back to turn 1
    assert code == 0 and not (repo / "notes.txt").exists()
    code, out = cli(capsys, "rewind", sid)
    assert code == 2 and "--undo" in out


def test_rewind_restores_only_under_the_sessions_folder(tmp_path, data_dir, capsys):
    repo = make_repo(tmp_path, {"pkgA/a.py": "a = 1\n", "pkgB/b.py": "b = 1\n"})
    sid = session_at(data_dir, repo / "pkgA")
    (repo / "pkgA/a.py").write_text("a = 2\n")
    (repo / "pkgA/new.py").write_text("new\n")
    (repo / "pkgB/b.py").write_text("b = 2\n")
    (repo / "pkgB/new.py").write_text("keep me\n")
    assert cli(capsys, "rewind", sid, "1")[0] == 0
    assert (repo / "pkgA/a.py").read_text() == "a = 1\n" and not (repo / "pkgA/new.py").exists()
    assert (repo / "pkgB/b.py").read_text() == "b = 2\n"
    assert (repo / "pkgB/new.py").read_text() == "keep me\n"
    code, out = cli(capsys, "rewind", sid, "1", "--repo", str(tmp_path))
    assert code == 2 and "not inside" in out


def test_a_narrower_repo_flag_narrows_the_restore(tmp_path, data_dir, capsys):
    repo = make_repo(tmp_path, {"a/x.txt": "1\n", "b/y.txt": "1\n"})
    sid = session_at(data_dir, repo)
    (repo / "a/x.txt").write_text("2\n")
    (repo / "b/y.txt").write_text("2\n")
    assert cli(capsys, "rewind", sid, "1", "--code-only", "--repo", str(repo / "a"))[0] == 0
    assert (repo / "a/x.txt").read_text() == "1\n" and (repo / "b/y.txt").read_text() == "2\n"


def test_oversized_untracked_files_are_not_stored_and_not_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_UNTRACKED_FILE_BYTES", 1000)
    repo = make_repo(tmp_path)
    (repo / ".gitignore").write_text("build/\n")
    (repo / "build").mkdir()
    (repo / "build/artifact.bin").write_bytes(b"\1" * 5000)
    (repo / "data.bin").write_bytes(b"\2" * 5000)
    (repo / "small.txt").write_text("small\n")
    marks = Checkpoints(repo, "s1")
    mark = marks.create(1)
    stored = ls_tree(repo, mark.commit)
    assert "small.txt" in stored and "data.bin" not in stored and "build/artifact.bin" not in stored
    (repo / "data.bin").write_bytes(b"\3" * 6000)
    marks.restore(1)
    assert (repo / "data.bin").read_bytes() == b"\3" * 6000  # left alone, not deleted


def test_the_untracked_total_is_capped_too(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_UNTRACKED_TOTAL_BYTES", 2500)
    repo = make_repo(tmp_path)
    for i in range(5):
        (repo / f"gen{i}.txt").write_text(str(i) * 1000)
    mark = Checkpoints(repo, "s1").create(1)
    stored = [n for n in ls_tree(repo, mark.commit) if n.startswith("gen")]
    assert len(stored) == 2


def test_sessions_delete_prunes_the_checkpoint_refs(tmp_path, data_dir, capsys):
    repo = make_repo(tmp_path)
    sid = session_at(data_dir, repo)
    Checkpoints(repo, sid).create(2)
    Checkpoints(repo, f"{sid}.seen").create(0)
    Checkpoints(repo, sid).restore(1)  # leaves an undo point
    other = session_at(data_dir, repo)
    assert len(refs(repo)) == 5
    assert cli(capsys, "sessions", "delete", sid)[0] == 0
    assert refs(repo) == [f"{REF_PREFIX}/{other}/1"]


def test_deleting_a_session_whose_repo_is_gone_still_works(tmp_path, data_dir, capsys):
    repo = make_repo(tmp_path)
    sid = session_at(data_dir, repo)
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    assert cli(capsys, "sessions", "delete", sid)[0] == 0
