"""The repository as the model first sees it: text files, least to most recently changed.

Binary and huge files are listed, not inlined. When the files do not fit the token budget, the
most recently changed ones are kept (they matter most) and the rest are listed as left out.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_BYTES = 256 * 1024
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".tox"}


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, with forward slashes
    size: int
    mtime: float
    kind: str  # "text" | "binary" | "huge" | "unreadable"


@dataclass
class Snapshot:
    """The rendered snapshot and an account of what it holds and leaves out."""

    text: str
    included: list[FileEntry] = field(default_factory=list)
    listed_only: list[FileEntry] = field(default_factory=list)  # binary, huge, unreadable
    left_out: list[FileEntry] = field(default_factory=list)  # text files over the budget
    tokens: int = 0

    def report(self) -> str:
        """One line for the user: what went in and what did not."""
        msg = f"{len(self.included)} files inlined ({self.tokens} tokens)"
        if self.listed_only:
            msg += f", {len(self.listed_only)} binary/huge listed"
        if self.left_out:
            msg += f", {len(self.left_out)} left out over the token budget"
        return msg


def list_files(root: Path) -> list[str]:
    """Tracked and untracked-not-ignored files (git), or a plain walk outside git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True, timeout=60).stdout
        return sorted({p for p in out.decode("utf-8", "replace").split("\0") if p})
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return _walk(root)


def _walk(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames]
    return sorted(found)


def classify(root: Path, rel: str) -> FileEntry | None:
    p = root / rel
    try:
        st = p.stat()
        if not p.is_file():
            return None
        if st.st_size > MAX_FILE_BYTES:
            return FileEntry(rel, st.st_size, st.st_mtime, "huge")
        head = p.open("rb").read(8192)
    except OSError:
        return FileEntry(rel, 0, 0.0, "unreadable")
    return FileEntry(rel, st.st_size, st.st_mtime, "binary" if _is_binary(head) else "text")


def _is_binary(head: bytes) -> bool:
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # a multi-byte character cut at the sample's end is fine
    return False


def render_file(root: Path, entry: FileEntry) -> str:
    body = (root / entry.path).read_text(encoding="utf-8", errors="replace")
    if body and not body.endswith("\n"):
        body += "\n"
    return f'<file path="{entry.path}">\n{body}</file>\n'


def take_snapshot(root: Path, count_tokens: Callable[[str], int], budget: int,
                  may_read: Callable[[str], bool] | None = None) -> Snapshot:
    """Inline text files within `budget` tokens, least to most recently changed. Files
    `may_read` refuses (read deny rules) are neither inlined nor listed."""
    names = [rel for rel in list_files(root) if may_read is None or may_read(rel)]
    entries = [e for e in (classify(root, rel) for rel in names) if e]
    text_files = sorted((e for e in entries if e.kind == "text"), key=lambda e: -e.mtime)
    snap = Snapshot(text="")
    chosen: list[tuple[FileEntry, str]] = []
    for e in text_files:  # newest first, so the budget keeps what changed last
        rendered = render_file(root, e)
        n = count_tokens(rendered)
        if snap.tokens + n > budget:
            snap.left_out.append(e)
            continue
        snap.tokens += n
        chosen.append((e, rendered))
    chosen.sort(key=lambda pair: (pair[0].mtime, pair[0].path))
    snap.included = [e for e, _ in chosen]
    snap.listed_only = [e for e in entries if e.kind != "text"]
    snap.text = _assemble(root, chosen, snap)
    return snap


def _assemble(root: Path, chosen: list[tuple[FileEntry, str]], snap: Snapshot) -> str:
    parts = [f"# Repository snapshot ({root.name})\n"]
    parts += [rendered for _, rendered in chosen]
    if snap.listed_only:
        parts.append("Not inlined (binary, huge or unreadable): " + ", ".join(
            f"{e.path} ({e.kind}, {e.size} bytes)" for e in snap.listed_only) + "\n")
    if snap.left_out:
        parts.append("Left out over the token budget (use the read tool): "
                     + ", ".join(e.path for e in snap.left_out) + "\n")
    return "".join(parts)
