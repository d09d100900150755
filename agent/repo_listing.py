"""The snapshot's list of files it did not inline, held to a token budget.

Names come whole while they fit; past that they are summarised by folder (two levels, then
one, then the largest folders and a count of the rest), so a 20,000-file repository costs a
few hundred tokens, not the 300K its names would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from agent.repo_files import FileEntry

_NOT_INLINED = "Not inlined (binary, huge, linked or oddly named): "
_LEFT_OUT = "Left out over the token budget (use the read tool): "
_CHARS_PER_TOKEN_MIN = 6  # paths take more tokens than this per character; a quick upper cut


def listing(others: list[FileEntry], left: list[FileEntry], count: Callable[[str], int],
            cap: int) -> list[str]:
    """Lines naming `others` (not inlinable) and `left` (over budget) within `cap` tokens."""
    if not others and not left:
        return []
    # The left-out list is summarised first: the few files that cannot be inlined keep names.
    for other_level, left_level in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (3, 3)]:
        lines = _lines(others, left, other_level, left_level)
        text = "".join(lines)
        if len(text) <= cap * _CHARS_PER_TOKEN_MIN and count(text) <= cap:
            return lines
    return _largest(others, left, count, cap)


def _lines(others: list[FileEntry], left: list[FileEntry], other_level: int, left_level: int
           ) -> list[str]:
    lines = []
    if others:
        detail = [f"{e.shown} ({e.kind}, {e.size} bytes)" for e in others]
        lines.append(_NOT_INLINED + _summary(others, other_level, detail) + "\n")
    if left:
        lines.append(_LEFT_OUT + _summary(left, left_level, None) + "\n")
    return lines


def _summary(entries: list[FileEntry], level: int, detail: list[str] | None) -> str:
    """Level 0: every name; 1: folders two deep; 2: one deep; 3: only the count."""
    if level == 0:
        return ", ".join(detail if detail is not None else [e.shown for e in entries])
    if level == 3:
        return f"{len(entries)} files"
    folders = Counter(_folder(e.shown, 3 - level) for e in entries)
    return f"{len(entries)} files in " + ", ".join(
        f"{name} ({n})" for name, n in sorted(folders.items()))


def _folder(path: str, depth: int) -> str:
    parts = path.split("/")
    if len(parts) == 1:
        return "./"
    return "/".join(parts[: min(depth, len(parts) - 1)]) + "/"


def _largest(others: list[FileEntry], left: list[FileEntry], count: Callable[[str], int],
             cap: int) -> list[str]:
    """Counts and the biggest top folders, as many as fit (at least the counts)."""
    lines = []
    for head, entries in ((_NOT_INLINED, others), (_LEFT_OUT, left)):
        if not entries:
            continue
        folders = Counter(_folder(e.shown, 1) for e in entries).most_common(20)
        line = f"{head}{len(entries)} files\n"
        for k in range(len(folders), 0, -1):
            named = ", ".join(f"{name} ({n})" for name, n in folders[:k])
            candidate = f"{head}{len(entries)} files, most in {named}\n"
            if count(candidate) <= cap // 2:
                line = candidate
                break
        lines.append(line)
    return lines
