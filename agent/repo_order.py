"""What the snapshot shows first: the files that matter, by git history rather than mtime.

A fresh clone or an unpacked sdist gives every file the same mtime, so recency comes from git:
the last commit touching each file, uncommitted changes newest of all (mtime orders only those,
and everything outside git). Priority, highest first: the README, the files the task names (by
path, name or a definition it mentions), source and docs, then packaging metadata and generated
files (egg-info, lock files, PKG-INFO, vendored folders).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.repo_files import FileEntry

HISTORY_COMMITS = 5000  # how far back `git log` looks for the last change of a file
UNCOMMITTED = 2.0**62  # sorts after every commit time

README, TASK, SOURCE, METADATA = 0, 1, 2, 3

_LOCK_FILES = {
    "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "cargo.lock", "uv.lock",
    "pipfile.lock", "gemfile.lock", "composer.lock", "go.sum", "flake.lock", "npm-shrinkwrap.json",
}
_METADATA_FILES = {
    "pkg-info", "setup.cfg", "manifest.in", "tox.ini", ".gitignore", ".gitattributes",
    ".editorconfig", ".pre-commit-config.yaml", "codeowners", ".travis.yml", ".coveragerc",
}
_LEGAL = ("license", "licence", "copying", "notice", "authors", "contributors")
_GENERATED_DIRS = {
    "vendor", "vendored", "_vendor", "third_party", "thirdparty", "dist", "build",
    "site-packages", "node_modules", "__snapshots__", ".github",
}
_GENERATED_SUFFIXES = (".min.js", ".min.css", ".map", "_pb2.py", "_pb2_grpc.py", ".pb.go")
_IDENTIFIER = re.compile(r"`([A-Za-z_][\w.]*)`|\b([A-Za-z_]\w*_\w*|[a-z]+[A-Z]\w*)\b|"
                         r"\b([A-Za-z_]\w*)\(")
_WORD = re.compile(r"[\w.\-/]+")


@dataclass(frozen=True)
class Ranked:
    """A file with its priority (lower first) and its recency (higher is newer)."""

    entry: FileEntry
    priority: int
    recency: float


def rank(root: Path, entries: list[FileEntry], task: str = "") -> list[Ranked]:
    """`entries` in the order the budget should take them: priority, then newest first."""
    times = change_times(root, [e.path for e in entries])
    named = task_files(root, [e.path for e in entries], task) if task else set()
    ranked = [Ranked(e, _priority(e.path, named), times.get(e.path, e.mtime)) for e in entries]
    return sorted(ranked, key=lambda r: (r.priority, -r.recency, r.entry.path))


def _priority(path: str, named: set[str]) -> int:
    if is_readme(path):
        return README
    if path in named:
        return TASK
    return METADATA if is_metadata(path) else SOURCE


def is_readme(path: str) -> bool:
    """A README at the repository root (any extension, any case)."""
    return "/" not in path and path.lower().split(".")[0] == "readme"


def is_metadata(path: str) -> bool:
    """Packaging metadata, lock files, licences and generated or vendored files."""
    p = PurePosixPath(path)
    name = p.name.lower()
    if name in _LOCK_FILES or name in _METADATA_FILES or name.startswith(_LEGAL):
        return True
    if name.endswith(_GENERATED_SUFFIXES):
        return True
    return any(d.lower() in _GENERATED_DIRS or d.endswith((".egg-info", ".dist-info"))
               for d in p.parts[:-1])


# ---- recency ---------------------------------------------------------------------------


def change_times(root: Path, paths: Iterable[str]) -> dict[str, float]:
    """Last commit time of each path; uncommitted ones after every commit, by mtime."""
    wanted = set(paths)
    times = _commit_times(root, wanted)
    for path in _uncommitted(root) & wanted:
        try:
            times[path] = UNCOMMITTED + os.lstat(root / path).st_mtime
        except OSError:
            times[path] = UNCOMMITTED
    return times


def _git(root: Path, *args: str) -> bytes | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True,
                              timeout=60).stdout
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return None


def _commit_times(root: Path, wanted: set[str]) -> dict[str, float]:
    out = _git(root, "log", f"-n{HISTORY_COMMITS}", "--format=%x01%ct", "--name-only", "-z",
               "--no-renames", "HEAD", "--")
    times: dict[str, float] = {}
    for commit in (out or b"").split(b"\x01")[1:]:
        when, _, names = commit.partition(b"\0")
        for raw in names.split(b"\0"):
            path = os.fsdecode(raw.lstrip(b"\n"))
            if path and path in wanted and path not in times:  # newest commit first
                times[path] = float(when)
        if len(times) == len(wanted):
            break
    return times


def _uncommitted(root: Path) -> set[str]:
    out = _git(root, "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames")
    found = set()
    for item in (out or b"").split(b"\0"):
        if len(item) > 3:
            found.add(os.fsdecode(item[3:]))
    return found


# ---- what the task names ---------------------------------------------------------------


def task_files(root: Path, paths: list[str], task: str) -> set[str]:
    """Files the task names: by path, by file name, by stem, or by a definition it mentions."""
    words = {w.strip(".,;:!?'\"()`/").lower() for w in _WORD.findall(task)}
    words |= {w.removesuffix("'s") for w in words}
    named = set()
    for path in paths:
        p = PurePosixPath(path)
        keys = {path.lower(), p.name.lower()}
        if len(p.stem) >= 3 and not is_metadata(path):
            keys.add(p.stem.lower())
        if keys & words:
            named.add(path)
    return named | _defining(root, set(paths), identifiers(task))


def identifiers(task: str) -> list[str]:
    """Names in the task that look like code: `quoted`, snake_case, camelCase or call()."""
    found = []
    for match in _IDENTIFIER.finditer(task):
        name = next(g for g in match.groups() if g).split(".")[-1]
        if len(name) >= 3 and name not in found:
            found.append(name)
    return found[:8]


def _defining(root: Path, paths: set[str], names: list[str]) -> set[str]:
    """Files that define one of `names` (def/class/assignment), found with git grep."""
    if not names:
        return set()
    args = ["grep", "-l", "-z", "-I", "-E"]
    for name in names:
        escaped = re.escape(name)
        args += ["-e", rf"(def|class|function|fn|func|struct|interface|type)\s+{escaped}\b",
                 "-e", rf"^{escaped}\s*="]
    out = _git(root, *args, "--untracked")
    return {os.fsdecode(p) for p in (out or b"").split(b"\0") if p} & paths


_BLOCK_START = r"^(\s*)(?:async\s+)?(?:def|class|function|fn|func|struct|interface|type)\s+{}\b"


def definition_span(lines: list[str], names: list[str]) -> tuple[int, int]:
    """Lines [start, end) of the first definition of one of `names` (its indented block)."""
    for name in names:
        pattern = re.compile(_BLOCK_START.format(re.escape(name)))
        for i, line in enumerate(lines):
            m = pattern.match(line)
            if m:
                return i, _block_end(lines, i, len(m.group(1)))
    return 0, len(lines)


def _block_end(lines: list[str], start: int, indent: int) -> int:
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped and len(lines[j]) - len(lines[j].lstrip()) <= indent and \
                not stripped.startswith((")", "]", "}")):
            return j
    return len(lines)
