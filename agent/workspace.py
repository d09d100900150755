"""The workspace sandbox: every path a tool touches is resolved here, inside the repository root.

`Workspace.resolve` is the one gate. It follows symlinks (realpath) before checking containment, so
`..`, absolute paths and symlinks (to files or directories) that lead outside the root are refused
alike, and it refuses writes into any `.git/` directory. Reads are also allowed inside the
workspace's output directory, where the shell tool keeps full outputs that were cut for the model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

# Files past this count are not listed: grep and glob stay bounded in a huge tree.
MAX_LISTED_FILES = 200_000


class WorkspaceError(Exception):
    """A path a tool may not use; the message is one line the model can act on."""


class PathOutsideWorkspace(WorkspaceError):
    """The path (after following symlinks) is not under the workspace root."""


class ProtectedPath(WorkspaceError):
    """The path is inside the workspace but may not be written (`.git/`)."""


class Workspace:
    """The repository root the tools work in, and the directory where long outputs are kept.

    `root` is stored resolved (realpath). `output_dir` defaults to a per-root directory under the
    system temp dir, so spilled outputs never show up in the user's `git status`.
    """

    def __init__(self, root: str | Path, output_dir: str | Path | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise WorkspaceError(f"workspace root {root} is not a directory")
        self.output_dir = Path(os.path.realpath(output_dir or _default_output_dir(self.root)))
        self.is_git = _inside_git_worktree(self.root)

    def resolve(self, path: str | Path, *, write: bool = False) -> Path:
        """The real absolute path of `path` (relative paths start at the root).

        Raises PathOutsideWorkspace when it resolves outside the root (reads may also use the
        output directory), ProtectedPath when `write` is set and it lies inside a `.git/`.
        """
        given = Path(path).expanduser()
        real = Path(os.path.realpath(given if given.is_absolute() else self.root / given))
        if _is_within(real, self.root):
            if write and _in_git_dir(real.relative_to(self.root)):
                raise ProtectedPath(f"{path}: writing inside .git/ is not allowed")
            return real
        if not write and _is_within(real, self.output_dir):
            return real
        raise PathOutsideWorkspace(
            f"{path}: outside the workspace {self.root}; use a path inside it"
        )

    def contains(self, path: Path) -> bool:
        """Whether `path` (followed through symlinks) lies under the root."""
        return _is_within(Path(os.path.realpath(path)), self.root)

    def relative(self, path: Path) -> str:
        """`path` as shown to the model: relative to the root when inside it, else absolute."""
        if _is_within(path, self.root):
            return path.relative_to(self.root).as_posix() or "."
        return str(path)

    def files(self) -> list[str]:
        """Relative posix paths of the workspace's files, sorted, leaving out `.git/` and, in a
        git repository, git-ignored files (`git ls-files -co --exclude-standard`)."""
        names = self._git_files() if self.is_git else self._walk_files()
        return sorted(n for n in names if os.path.isfile(self.root / n))[:MAX_LISTED_FILES]

    def _git_files(self) -> list[str]:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=self.root,
            capture_output=True,
            check=True,
        ).stdout
        # -c lists unmerged paths once per stage: dedupe
        return list(dict.fromkeys(os.fsdecode(n) for n in out.split(b"\0") if n))

    def _walk_files(self) -> list[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            rel = Path(dirpath).relative_to(self.root)
            found.extend((rel / f).as_posix() for f in filenames)
            if len(found) > MAX_LISTED_FILES:
                break
        return found


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _in_git_dir(rel: Path) -> bool:
    # casefold: on a case-insensitive file system `.GIT/config` is the same file
    return any(part.casefold() == ".git" for part in rel.parts)


def _inside_git_worktree(root: Path) -> bool:
    done = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True, text=True
    )
    return done.returncode == 0 and done.stdout.strip() == "true"


def _default_output_dir(root: Path) -> Path:
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "agent-outputs" / f"{root.name}-{digest}"
