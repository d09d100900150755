"""The workspace sandbox: every path a tool touches is resolved here, inside the repository root.

`Workspace.resolve` is the one gate for names. It follows symlinks (realpath) before checking
containment, so `..`, absolute paths and symlinks (to files or directories) that lead outside the
root are refused alike, and it refuses writes into any `.git/` directory and into the hooks
directory the repository's git config names (`core.hooksPath`, e.g. `.husky`): files there run at
the next commit. Reads are also allowed inside the workspace's output directory, where the shell
tool keeps full outputs that were cut for the model; that directory is made per workspace with
`mkdtemp` (mode 0700), so nobody can plant a link there.

`read_bytes` and `write_bytes` then confine by file descriptor, not by name: they walk from the
root's descriptor one component at a time with `O_NOFOLLOW` (`dir_fd`), so a directory swapped for
a symlink after the check makes the call fail instead of escaping. Writes go to a temporary file
in the same directory, renamed over the target, and a target with more than one hard link is
refused (the other link may lie outside).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Files past this count are not listed: grep and glob stay bounded in a huge tree.
MAX_LISTED_FILES = 200_000


class WorkspaceError(Exception):
    """A path a tool may not use; the message is one line the model can act on."""


class PathOutsideWorkspace(WorkspaceError):
    """The path (after following symlinks) is not under the workspace root."""


class ProtectedPath(WorkspaceError):
    """The path is inside the workspace but may not be written (`.git/`, the hooks directory,
    a hard-linked file)."""


class PathChanged(WorkspaceError):
    """A component of the path was swapped (e.g. for a symlink) while it was being opened."""


class Workspace:
    """The repository root the tools work in, and the directory where long outputs are kept.

    `root` is stored resolved (realpath). `output_dir` defaults to a fresh private directory under
    the system temp dir (`mkdtemp`), so spilled outputs never show up in the user's `git status`.
    """

    def __init__(self, root: str | Path, output_dir: str | Path | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise WorkspaceError(f"workspace root {root} is not a directory")
        if output_dir is None:
            output_dir = tempfile.mkdtemp(prefix=f"agent-outputs-{self.root.name[:40]}-")
        self.output_dir = Path(os.path.realpath(output_dir))
        self.is_git = _inside_git_worktree(self.root)

    def resolve(self, path: str | Path, *, write: bool = False) -> Path:
        """The real absolute path of `path` (relative paths start at the root).

        Raises PathOutsideWorkspace when it resolves outside the root (reads may also use the
        output directory), ProtectedPath when `write` is set and it lies inside a `.git/`.
        """
        given = Path(_unquoted_if_missing(self.root, path)).expanduser()
        real = Path(os.path.realpath(given if given.is_absolute() else self.root / given))
        if _is_within(real, self.root):
            if write:
                self._check_writable(real, path)
            return real
        if not write and _is_within(real, self.output_dir):
            return real
        raise PathOutsideWorkspace(
            f"{path}: outside the workspace {self.root}; use a path inside it"
        )

    def _check_writable(self, real: Path, shown: str | Path) -> None:
        if _in_git_dir(real.relative_to(self.root)):
            raise ProtectedPath(f"{shown}: writing inside .git/ is not allowed")
        hooks = self.hooks_dir()
        if hooks is not None and _is_within(real, hooks):
            raise ProtectedPath(
                f"{shown}: writing in the git hooks directory ({self.relative(hooks)}, "
                "core.hooksPath) is not allowed: hooks run at the next commit"
            )

    def hooks_dir(self) -> Path | None:
        """The directory `core.hooksPath` names (resolved), or None when unset or not in git."""
        if not self.is_git:
            return None
        done = subprocess.run(
            ["git", "config", "--path", "--get", "core.hooksPath"],
            cwd=self.root, capture_output=True, text=True, errors="surrogateescape",
        )
        value = done.stdout.strip()
        if done.returncode != 0 or not value:
            return None
        top = _toplevel(self.root)
        return Path(os.path.realpath(Path(top) / Path(value).expanduser()))

    def read_bytes(self, real: Path, limit: int | None = None) -> bytes:
        """The contents of the resolved file `real`, opened by descriptor walk (no symlink
        followed); at most `limit` bytes when given."""
        with self._open(real, os.O_RDONLY) as fd:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise WorkspaceError(f"{self.relative(real)} is not a regular file")
            return _read_fd(fd, limit)

    def write_bytes(self, real: Path, data: bytes) -> None:
        """Replace (or create) the resolved file `real` with `data`: parent directories made as
        needed, written to a temporary file beside it and renamed over it."""
        anchor, parts = self._anchor(real, write=True)
        with _walk(anchor, parts[:-1], create=True) as dfd:
            name = parts[-1]
            mode = _existing_mode(dfd, name, self.relative(real))
            tmp = f".{name[:100]}.{uuid.uuid4().hex[:12]}.agent-tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o666 if mode is None else mode, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if mode is not None:
                        os.fchmod(f.fileno(), mode)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                os.unlink(tmp, dir_fd=dfd)
                raise

    @contextmanager
    def _open(self, real: Path, flags: int) -> Iterator[int]:
        anchor, parts = self._anchor(real, write=False)
        with _walk(anchor, parts[:-1], create=False) as dfd:
            fd = _open_at(parts[-1], flags | os.O_NOFOLLOW, dfd, self.relative(real))
            try:
                yield fd
            finally:
                os.close(fd)

    def _anchor(self, real: Path, *, write: bool) -> tuple[Path, tuple[str, ...]]:
        """The trusted directory `real` lies under, and the components below it."""
        for anchor in (self.root,) if write else (self.root, self.output_dir):
            if real != anchor and _is_within(real, anchor):
                return anchor, real.relative_to(anchor).parts
        raise PathOutsideWorkspace(f"{real}: outside the workspace {self.root}")

    def shown(self, path: Path) -> str:
        """`path` as the model is shown it: `relative`, quoted where the name holds bytes that
        are not UTF-8 or characters that would break a listing (see `display_name`)."""
        return display_name(self.relative(path))

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


def display_name(name: str) -> str:
    """A file name as tools print it: as is when it is plain text; otherwise in double quotes
    with C-style escapes (`\\n`, `\\"`, `\\xff` for a byte that is not UTF-8), the way git
    quotes paths. `resolve` accepts the quoted form back."""
    if _PLAIN_NAME.match(name) and not name.startswith('"'):
        return name
    raw = os.fsencode(name)
    out = []
    for ch in raw.decode("utf-8", errors="surrogateescape"):
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def unquote_name(text: str) -> str | None:
    """The name a `display_name` quoted form stands for (surrogate-escaped), or None."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return None
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", errors="surrogateescape")
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _UNESCAPES:
            out += _UNESCAPES[nxt]
            i += 2
        elif nxt in ("x", "u"):
            width = 2 if nxt == "x" else 4
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                return None
            value = int(digits, 16)
            out += bytes([value]) if nxt == "x" else chr(value).encode("utf-8", "surrogatepass")
            i += 2 + width
        else:
            return None
    return os.fsdecode(bytes(out))


def _unquoted_if_missing(root: Path, path: str | Path) -> str | Path:
    text = os.fspath(path)
    name = unquote_name(text) if isinstance(text, str) else None
    if name is None or os.path.lexists(root / text):
        return path
    return name


_PLAIN_NAME = re.compile(r"^[^\x00-\x1f\x7f-\x9f\\\u2028\u2029\ud800-\udfff]*$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNESCAPES = {"\\": b"\\", '"': b'"', "n": b"\n", "t": b"\t", "r": b"\r"}


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


def _toplevel(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root,
                          capture_output=True, text=True, errors="surrogateescape")
    return done.stdout.strip() or str(root)


@contextmanager
def _walk(anchor: Path, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
    """A descriptor of anchor/parts, reached one directory at a time without following links."""
    fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            nxt = _open_at(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, fd, part)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def _open_at(name: str, flags: int, dir_fd: int, shown: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise PathChanged(
                f"{shown}: a part of this path is (now) a symlink or not a directory; "
                "it changed while being opened"
            ) from None
        if e.errno == errno.ENOENT:
            raise WorkspaceError(f"{shown}: no such file or directory") from None
        raise WorkspaceError(f"{shown}: {e.strerror}") from None


def _existing_mode(dfd: int, name: str, shown: str) -> int | None:
    """The permission bits of the file being replaced (None if new); refuses links and
    non-regular files."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise PathChanged(f"{shown}: it became a symlink while being written; not written")
    if not stat.S_ISREG(st.st_mode):
        raise WorkspaceError(f"{shown} is not a regular file")
    if st.st_nlink > 1:
        raise ProtectedPath(
            f"{shown} has {st.st_nlink} hard links (another may lie outside the workspace); "
            "not written"
        )
    return stat.S_IMODE(st.st_mode)


def _read_fd(fd: int, limit: int | None) -> bytes:
    chunks, left = [], limit if limit is not None else -1
    while left != 0:
        chunk = os.read(fd, 1 << 20 if left < 0 else min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left = left - len(chunk) if left > 0 else left
    return b"".join(chunks)
