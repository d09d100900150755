"""Unified diffs as rows: parsed once, then shown unified or side by side.

Pure logic (no widgets), so the pairing rules are tested without an app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

RowKind = Literal["file", "hunk", "context", "add", "del"]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One line of a unified diff with the line numbers it has on each side."""

    kind: RowKind
    text: str
    old_no: int | None = None
    new_no: int | None = None


@dataclass(frozen=True, slots=True)
class SplitRow:
    """One line of a side-by-side diff: the old side, the new side (either may be None)."""

    old: DiffRow | None
    new: DiffRow | None


def parse_unified(diff: str) -> list[DiffRow]:
    """Rows of a unified diff; lines outside hunks (headers) become `file` rows.

    The hunk header's line counts decide where a hunk ends, so a removed line that itself
    starts with "-- " is not mistaken for a file header.
    """
    rows: list[DiffRow] = []
    old_no = new_no = old_left = new_left = 0
    for line in diff.splitlines():
        match = _HUNK.match(line) if old_left <= 0 and new_left <= 0 else None
        if match:
            old_no, new_no = int(match[1]), int(match[3])
            old_left = int(match[2]) if match[2] is not None else 1
            new_left = int(match[4]) if match[4] is not None else 1
            rows.append(DiffRow("hunk", line))
        elif (old_left <= 0 and new_left <= 0) or line.startswith("\\"):
            rows.append(DiffRow("file", line))  # headers, and "\ No newline at end of file"
        elif line.startswith("+"):
            rows.append(DiffRow("add", line[1:], new_no=new_no))
            new_no, new_left = new_no + 1, new_left - 1
        elif line.startswith("-"):
            rows.append(DiffRow("del", line[1:], old_no=old_no))
            old_no, old_left = old_no + 1, old_left - 1
        else:
            rows.append(DiffRow("context", line[1:], old_no=old_no, new_no=new_no))
            old_no, new_no = old_no + 1, new_no + 1
            old_left, new_left = old_left - 1, new_left - 1
    return rows


def side_by_side(rows: list[DiffRow]) -> list[SplitRow]:
    """Pair each run of deletions with the additions that follow it, line by line."""
    out: list[SplitRow] = []
    dels: list[DiffRow] = []
    adds: list[DiffRow] = []

    def flush() -> None:
        for i in range(max(len(dels), len(adds))):
            out.append(
                SplitRow(dels[i] if i < len(dels) else None, adds[i] if i < len(adds) else None)
            )
        dels.clear()
        adds.clear()

    for row in rows:
        if row.kind == "del":
            if adds:  # a deletion after additions starts a new change block
                flush()
            dels.append(row)
        elif row.kind == "add":
            adds.append(row)
        else:
            flush()
            out.append(SplitRow(row, row))
    flush()
    return out


def stats(rows: list[DiffRow]) -> tuple[int, int]:
    """(lines added, lines removed)."""
    added = sum(row.kind == "add" for row in rows)
    removed = sum(row.kind == "del" for row in rows)
    return added, removed
