"""The repository's files as the snapshot may read them: listed, classified, opened safely.

Nothing here follows a symbolic link: a file is opened by walking its directories from the
repository root with `O_NOFOLLOW` at every step, so a committed link (or one swapped in after
the listing) can never pull an outside file into the prompt. Names are bytes on disk; they are
decoded with `surrogateescape` so every name round-trips, and names that would break the
`<file path="...">` framing are shown escaped and never inlined.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 256 * 1024
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".tox"}
# Characters that end or forge the framing (quotes, tags), escapes, and anything unprintable.
_FRAMING = set('"<>\\')
_LINE_BREAKS = {"\u0085", "\u2028", "\u2029"}


@dataclass(frozen=True)
class FileEntry:
    """One file of the repository and what the snapshot can do with it."""

    path: str  # relative, with forward slashes, surrogate-escaped where not UTF-8
    size: int
    mtime: float
    # "text" | "binary" | "huge" | "unreadable" | "link" (a symlink: never followed)
    # | "odd-name" (a name that cannot be framed verbatim: listed escaped, never inlined)
    kind: str

    @property
    def shown(self) -> str:
        """The path as the prompt shows it (escaped where it would break the framing)."""
        return shown_name(self.path)


def shown_name(path: str) -> str:
    """`path` with framing characters, control characters and undecodable bytes escaped."""
    if is_plain_name(path):
        return path
    return "".join(_escape_char(c) for c in path)


def is_plain_name(path: str) -> bool:
    """True when `path` can stand verbatim inside `path="..."` and in a comma list."""
    return all(c.isprintable() and c not in _FRAMING and c not in _LINE_BREAKS
               and not 0xDC80 <= ord(c) <= 0xDCFF for c in path)


def looks_like_path(path: str) -> bool:
    """A name a new file could be given: it has an extension or a folder part (`./Makefile`).

    A bare word (`write`, `wrote`, `result`) is what a small model writes when it mistakes a
    tool's name or its own words for a path."""
    name = path.strip()
    if not name or name != path or name in (".", "..") or not is_plain_name(name):
        return False
    return "/" in name or "." in name.lstrip(".")[:-1] or name.startswith(".")


def _escape_char(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if c in _FRAMING or not c.isprintable() or c in _LINE_BREAKS:
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return c


def list_files(root: Path) -> list[str]:
    """Tracked and untracked-not-ignored files (git), or a plain walk outside git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True, timeout=60).stdout
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return _walk(root)
    return sorted({os.fsdecode(p) for p in out.split(b"\0") if p})


def _walk(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # never descends into linked folders
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames]
    return sorted(found)


def classify(root: Path, rel: str) -> FileEntry | None:
    """What `rel` is, without following links; None for what is not a file (a folder, gone)."""
    try:
        st = os.lstat(root / rel)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return FileEntry(rel, 0, st.st_mtime, "link")
    if not stat.S_ISREG(st.st_mode):
        return None
    if not is_plain_name(rel):
        return FileEntry(rel, st.st_size, st.st_mtime, "odd-name")
    if st.st_size > MAX_FILE_BYTES:
        return FileEntry(rel, st.st_size, st.st_mtime, "huge")
    try:
        head = read_inside(root, rel, 8192)
    except OSError:
        return FileEntry(rel, st.st_size, st.st_mtime, "unreadable")
    return FileEntry(rel, st.st_size, st.st_mtime, "binary" if _is_binary(head) else "text")


def read_inside(root: Path, rel: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """Up to `limit` bytes of the regular file `rel`, opened without following any link.

    Raises OSError (ELOOP, ENOTDIR, ...) when a step of the way is a link or not what the
    listing said: the caller lists the file instead of inlining it."""
    parts = rel.split("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # the root itself may be a link
    try:
        for part in parts[:-1]:
            if part in ("", ".", ".."):
                raise OSError(f"not a plain relative path: {rel!r}")
            nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        nxt = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        os.close(fd)
        fd = nxt
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {rel!r}")
        return _read_up_to(fd, limit)
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _is_binary(head: bytes) -> bool:
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # a multi-byte character cut at the sample's end is fine
    return False
