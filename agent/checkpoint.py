"""Checkpoints of the whole worktree, one per turn, kept as git commits in a private store.

The store is a bare repository inside the user's git directory
(`.git/resident-agent/checkpoints.git`) that borrows the repository's objects (an alternate):
its refs `refs/checkpoints/<session>/<turn>` keep the checkpoints alive, and since they are not
the repository's refs, `git log --all`, `git branch -a`, gc's reachability, fetch and push
never see them. New blobs a checkpoint needs are written into the store, not the repository.
Checkpoints an older agent kept as `refs/agent/checkpoints/...` in the repository itself are
still listed, restored and deleted.

`create` snapshots every tracked and untracked-but-not-ignored file under the checkpoints' root
(the session's `--repo`, which may be a folder of a larger repository), whoever changed it (edit
tools or shell commands). Untracked files over `MAX_UNTRACKED_FILE_BYTES`, and the largest ones
past `MAX_UNTRACKED_TOTAL_BYTES` in all, are left out (regenerated artifacts would otherwise add
their size to the repository every turn); restore leaves such files alone. It works in a
temporary index (`GIT_INDEX_FILE`): a copy of the user's index (so unchanged files are not hashed
again, and tracked files that match .gitignore are kept), then `git add -A`, `git write-tree`,
`git commit-tree` with HEAD (if any) as parent, and `git update-ref
refs/checkpoints/<session>/<turn>` in the store. The user's index, HEAD, branches, refs and stash
are never written; the store's refs keep the objects alive until `delete`.

`restore` first saves the worktree as the `undo` checkpoint (`undo()` goes back to it, and is
itself undoable), then makes the worktree under the root match the checkpoint exactly:
- files that differ from the checkpoint are rewritten (content, executable bit, symlinks);
- files that exist now but not in the checkpoint are deleted (then empty parent directories);
- ignored files are not touched, except a path the checkpoint holds that is ignored now, which is
  overwritten with the checkpoint's content;
- submodules (gitlinks) and paths outside the root (another package of a monorepo) are left
  alone;
- HEAD, branches and the user's index are not changed at all: staged content stays staged, so
  afterwards `git diff` shows the restored worktree against what was staged, and
  `git diff --cached` is what it was before.
`delete_session_checkpoints` drops every ref of a session (with `sessions delete`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REF_PREFIX = "refs/checkpoints"  # in the store
LEGACY_PREFIX = "refs/agent/checkpoints"  # in the repository, before the store existed
STORE_DIR = "resident-agent/checkpoints.git"  # under the repository's (common) git dir
UNDO = "undo"
MAX_UNTRACKED_FILE_BYTES = 4 * 1024 * 1024
MAX_UNTRACKED_TOTAL_BYTES = 64 * 1024 * 1024
_SESSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# commit-tree needs an identity; a checkpoint must not depend on the user having configured one
_IDENTITY = {
    "GIT_AUTHOR_NAME": "agent checkpoint",
    "GIT_AUTHOR_EMAIL": "agent@localhost",
    "GIT_COMMITTER_NAME": "agent checkpoint",
    "GIT_COMMITTER_EMAIL": "agent@localhost",
}
_GITLINK = "160000"


class CheckpointError(Exception):
    """A checkpoint could not be made, found or restored; the message is one line."""


@dataclass(frozen=True)
class Checkpoint:
    """One snapshot: the commit that holds the worktree's tree at the start of a turn."""

    session: str
    turn: int | str  # a turn number, or UNDO for the state before the last restore
    commit: str
    legacy: bool = False  # its ref is in the repository (an older agent made it)

    @property
    def ref(self) -> str:
        return f"{LEGACY_PREFIX if self.legacy else REF_PREFIX}/{self.session}/{self.turn}"


def in_git_repository(path: str | Path) -> bool:
    """True when `path` is inside a git work tree (checkpoints and rewind need one)."""
    done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=path,
                          capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "true"


def delete_session_checkpoints(root: str | Path, session: str) -> int:
    """Delete every checkpoint ref of `session` (its turns, its undo point and the watcher's
    `.seen` snapshots) in the repository containing `root`; how many refs went. A root that
    is gone or not in git has none: 0."""
    try:
        doomed = [Checkpoints(root, name) for name in (session, f"{session}.seen")]
    except (CheckpointError, OSError):
        return 0
    return sum(c.delete(everything=True) for c in doomed)


class Checkpoints:
    """The checkpoints of one session in the git repository that contains `root`."""

    def __init__(self, root: str | Path, session: str) -> None:
        if not _SESSION.match(session) or ".." in session or session.endswith(".lock"):
            raise CheckpointError(f"bad session id {session!r} for a checkpoint ref")
        self.session = session
        self.root = Path(self._toplevel(root))
        scope = Path(os.path.realpath(root)).relative_to(os.path.realpath(self.root))
        self.scope = scope.as_posix() if scope.parts else ""
        self.store = self._open_store()

    def create(self, turn: int | str) -> Checkpoint:
        """Snapshot the worktree as the checkpoint of `turn` (replacing one of the same turn)."""
        if turn != UNDO and (not isinstance(turn, int) or turn < 0):
            raise CheckpointError(f"turn must be >= 0, got {turn}")
        with tempfile.TemporaryDirectory(prefix="agent-ckpt-") as tmp:
            tree, _ = self._snapshot_tree(Path(tmp) / "index")
        parent = self._head()
        cmd = ["commit-tree", tree, "-m", f"agent checkpoint {self.session}/{turn}"]
        commit = self._git(*cmd, *(["-p", parent] if parent else []), env=_IDENTITY).strip()
        checkpoint = Checkpoint(self.session, turn, commit)
        self._store_git("update-ref", checkpoint.ref, commit)
        return checkpoint

    def get(self, turn: int) -> Checkpoint:
        """The checkpoint of `turn`; CheckpointError if there is none."""
        for checkpoint in self.list():
            if checkpoint.turn == turn:
                return checkpoint
        raise CheckpointError(f"no checkpoint for turn {turn} in session {self.session}")

    def list(self) -> list[Checkpoint]:
        """This session's checkpoints, oldest turn first (the store's over legacy ones)."""
        found: dict[int, Checkpoint] = {}
        for legacy in (True, False):
            for turn, commit in self._refs(legacy):
                if turn.isdigit():
                    found[int(turn)] = Checkpoint(self.session, int(turn), commit, legacy)
        return [found[t] for t in sorted(found)]

    def _refs(self, legacy: bool) -> list[tuple[str, str]]:
        """(last ref component, commit) of this session's refs in the store or the repository."""
        prefix = f"{LEGACY_PREFIX if legacy else REF_PREFIX}/{self.session}/"
        git = self._git if legacy else self._store_git
        out = git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return [(ref.rsplit("/", 1)[1], commit)
                for ref, commit in (line.split(" ") for line in out.splitlines())]

    def delete(self, turn: int | None = None, *, everything: bool = False) -> int:
        """Delete the checkpoint of `turn`, or all of the session's turns when None (and the
        undo point too with `everything`); how many went."""
        doomed = [c for c in self.list() if turn is None or c.turn == turn]
        if everything:
            doomed += [u for u in [self._undo_point()] if u is not None]
        for legacy, git in ((True, self._git), (False, self._store_git)):
            script = "".join(f"delete {c.ref}\n" for c in doomed if c.legacy == legacy)
            if script:
                git("update-ref", "--stdin", stdin=script)
        return len(doomed)

    def restore(self, checkpoint: Checkpoint | int) -> list[str]:
        """Save the worktree as the undo point, then make it match `checkpoint` under the root
        (see the module docstring); the paths changed."""
        target = checkpoint if isinstance(checkpoint, Checkpoint) else self.get(checkpoint)
        with tempfile.TemporaryDirectory(prefix="agent-ckpt-") as tmp:
            now, skipped = self._snapshot_tree(Path(tmp) / "index")
            self._save_undo(now)
            deleted, written = self._changes(now, f"{target.commit}^{{tree}}", skipped)
            self._remove(deleted)
            self._checkout(f"{target.commit}^{{tree}}", written, Path(tmp) / "restore-index")
        return sorted(deleted + written)

    def undo(self) -> list[str]:
        """Put the worktree back as it was before the last `restore` (which becomes the new
        undo point, so undoing twice is a no-op); the paths changed."""
        point = self._undo_point()
        if point is None:
            raise CheckpointError(f"session {self.session} has no rewind to undo")
        return self.restore(point)

    def changed_since(self, checkpoint: Checkpoint | int) -> list[str]:
        """Paths whose worktree state differs from `checkpoint` now (what `restore` would touch)."""
        target = checkpoint if isinstance(checkpoint, Checkpoint) else self.get(checkpoint)
        with tempfile.TemporaryDirectory(prefix="agent-ckpt-") as tmp:
            now, skipped = self._snapshot_tree(Path(tmp) / "index")
        deleted, written = self._changes(now, f"{target.commit}^{{tree}}", skipped)
        return sorted(deleted + written)

    def diff(self, old: Checkpoint, new: Checkpoint, pathspecs: list[str]) -> str:
        """`git diff` between two checkpoints (their objects are in the store), as text."""
        done = self._run("diff", "--no-color", "--no-ext-diff", old.commit, new.commit, "--",
                         *pathspecs)
        # bytes that are not UTF-8 become U+FFFD: the diff is text for the model
        return done.stdout.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    def _save_undo(self, tree: str) -> None:
        parent = self._head()
        cmd = ["commit-tree", tree, "-m", f"agent checkpoint {self.session}/{UNDO}"]
        commit = self._git(*cmd, *(["-p", parent] if parent else []), env=_IDENTITY).strip()
        self._store_git("update-ref", Checkpoint(self.session, UNDO, commit).ref, commit)
        legacy = self._legacy_undo_point()
        if legacy is not None:  # the store's undo point replaces it
            self._git("update-ref", "-d", legacy.ref)

    def _undo_point(self) -> Checkpoint | None:
        for turn, commit in self._refs(legacy=False):
            if turn == UNDO:
                return Checkpoint(self.session, UNDO, commit)
        return self._legacy_undo_point()

    def _legacy_undo_point(self) -> Checkpoint | None:
        found = [c for t, c in self._refs(legacy=True) if t == UNDO]
        return Checkpoint(self.session, UNDO, found[0], legacy=True) if found else None

    # ---- plumbing ------------------------------------------------------------------------

    def _snapshot_tree(self, index: Path) -> tuple[str, set[str]]:
        """The tree of the worktree as it is now, built in the temporary index `index`, and the
        untracked files left out of it for their size."""
        user_index = Path(
            self._git("rev-parse", "--path-format=absolute", "--git-path", "index").strip()
        )
        if user_index.exists():
            shutil.copy2(user_index, index)  # keep its mtime: git spots racily-clean entries by it
        env = {"GIT_INDEX_FILE": str(index)}
        skipped = self._oversized_untracked()
        specs = [f":(literal){self.scope}" if self.scope else ".",
                 *(f":(exclude,literal){p}" for p in sorted(skipped))]
        self._git("add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul", env=env,
                  stdin="".join(s + "\0" for s in specs))
        return self._git("write-tree", env=env).strip(), skipped

    def _oversized_untracked(self) -> set[str]:
        """Untracked, not ignored files under the root that a checkpoint leaves out."""
        scope = f":(literal){self.scope}" if self.scope else "."
        out = self._git("ls-files", "-o", "--exclude-standard", "-z", "--", scope)
        sizes = []
        for rel in filter(None, out.split("\0")):
            try:
                sizes.append((os.lstat(self.root / rel).st_size, rel))
            except OSError:
                continue
        skipped, total = set(), 0
        for size, rel in sorted(sizes):
            if size > MAX_UNTRACKED_FILE_BYTES or total + size > MAX_UNTRACKED_TOTAL_BYTES:
                skipped.add(rel)
            else:
                total += size
        return skipped

    def _changes(self, now: str, target: str, keep: set[str] = frozenset()
                 ) -> tuple[list[str], list[str]]:
        """Paths under the root to delete and to write to go from tree `now` to tree `target`,
        leaving `keep` (files the snapshot `now` could not hold) alone."""
        scope = [self.scope] if self.scope else []
        out = self._git("diff-tree", "-r", "-z", "--no-renames", now, target, "--", *scope,
                        env={"GIT_LITERAL_PATHSPECS": "1"})
        fields = out.split("\0")[:-1]  # every record ends with NUL
        deleted, written = [], []
        for header, path in zip(fields[0::2], fields[1::2], strict=True):
            old_mode, new_mode, *_, status = header.lstrip(":").split(" ")
            if _GITLINK in (old_mode, new_mode) or path in keep:
                continue
            (deleted if status == "D" else written).append(path)
        return deleted, written

    def _remove(self, paths: list[str]) -> None:
        for rel in paths:
            path = self.root / rel
            if path.is_symlink() or path.is_file():
                path.unlink()
            self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, directory: Path) -> None:
        while directory != self.root and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent

    def _checkout(self, tree: str, paths: list[str], index: Path) -> None:
        if not paths:
            return
        env = {"GIT_INDEX_FILE": str(index)}
        self._git("read-tree", tree, env=env)
        self._git(
            "checkout-index", "-f", "-z", "--stdin", env=env, stdin="".join(p + "\0" for p in paths)
        )

    def _head(self) -> str | None:
        done = self._run("rev-parse", "--verify", "-q", "HEAD^{commit}")
        return done.stdout.strip() if done.returncode == 0 else None

    def _open_store(self) -> Path:
        """The private store, made on first use: a bare repository of the same object format
        whose alternate is the repository's object directory."""
        common = Path(self._run_plain("rev-parse", "--path-format=absolute",
                                      "--git-common-dir").strip())
        store = common / STORE_DIR
        alternates = store / "objects" / "info" / "alternates"
        if not alternates.is_file():
            fmt = self._run_plain("rev-parse", "--show-object-format").strip() or "sha1"
            self._run_plain("init", "-q", "--bare", f"--object-format={fmt}", str(store))
            alternates.parent.mkdir(parents=True, exist_ok=True)
            alternates.write_text(str(common / "objects") + "\n")
        return store

    def _run_plain(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            message = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise CheckpointError(f"git {args[0]} failed: {message}")
        return done.stdout

    def _store_git(self, *args: str, stdin: str | None = None) -> str:
        """git on the store's refs (its objects include the repository's)."""
        return self._git(f"--git-dir={self.store}", *args, stdin=stdin)

    def _toplevel(self, root: str | Path) -> str:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise CheckpointError(
                f"{root} is not in a git repository; checkpoints need one (run git init)"
            )
        return done.stdout.strip()

    def _git(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        done = self._run(*args, env=env, stdin=stdin)
        if done.returncode != 0:
            message = (done.stderr.strip().splitlines() or ["no message"])[-1]
            command = next(a for a in args if not a.startswith("--"))
            raise CheckpointError(f"git {command} failed: {message}")
        return done.stdout

    def _run(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # The store's object directory first: new objects go there, and every object of the
        # repository is still found through the store's alternate.
        objects = {"GIT_OBJECT_DIRECTORY": str(self.store / "objects")}
        return subprocess.run(
            ["git", *args],
            cwd=self.root,
            input=stdin,
            capture_output=True,
            encoding="utf-8",
            errors="surrogateescape",
            env={**os.environ, **objects, **(env or {})},
        )
