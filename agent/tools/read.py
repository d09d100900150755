"""read: a file as numbered lines (`cat -n` style), or a directory's entries."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from pydantic import Field

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError, ToolResult, path_field
from agent.workspace import display_name

DEFAULT_LIMIT = 2000
MAX_LINE_CHARS = 2000
MAX_DIR_ENTRIES = 1000
# Past this a file is not loaded whole; grep or shell (head, sed -n) read it in pieces.
MAX_FILE_BYTES = 64 * 1024 * 1024


class ReadArgs(ToolArgs):
    path: str = path_field("File or directory, relative to the repository root.")
    offset: int | None = Field(None, ge=1, description="First line to show (1-based).")
    limit: int | None = Field(None, ge=1, description=f"Lines to show (default {DEFAULT_LIMIT}).")


class ReadTool(Tool):
    """Shows a text file with line numbers and records what the model saw (for edit/write)."""

    name = "read"
    description = (
        "Read a file from the repository. Lines are numbered from 1 (`cat -n` style); use "
        f"offset and limit for long files (default {DEFAULT_LIMIT} lines). Lines longer than "
        f"{MAX_LINE_CHARS} characters are cut. A directory path lists its entries. "
        "A file must be read before it can be edited or overwritten."
    )
    Args = ReadArgs
    kind = "read"
    main_arg = "path"

    def run(self, args: ReadArgs, ctx: ToolContext) -> ToolResult:
        path = ctx.workspace.resolve(args.path)
        shown = ctx.workspace.shown(path)
        if path.is_dir():
            return _list_dir(path, shown)
        if not path.exists():
            raise ToolError(_not_found(shown, ctx))
        data = _load(path, shown, ctx)
        ctx.files.record(path, data)
        lines = data.decode("utf-8", errors="replace").split("\n")
        if lines[-1] == "":
            lines.pop()  # a final newline ends the last line; it does not start a new one
        content = _numbered(lines, args.offset or 1, args.limit or DEFAULT_LIMIT, shown)
        return ToolResult(True, content, metadata={"path": shown, "lines": len(lines)})


def _load(path: Path, shown: str, ctx: ToolContext) -> bytes:
    if not path.is_file():
        raise ToolError(f"{shown} is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ToolError(
            f"{shown} is too large to read ({size:,} bytes); use grep, or shell with "
            "head/sed -n to read parts of it"
        )
    data = ctx.workspace.read_bytes(path, MAX_FILE_BYTES + 1)
    if b"\0" in data[:8192]:
        raise ToolError(f"{shown} is a binary file ({size:,} bytes); read shows text files only")
    return data


def _numbered(lines: list[str], offset: int, limit: int, shown: str) -> str:
    if not lines:
        return f"({shown} is empty)"
    if offset > len(lines):
        raise ToolError(f"offset {offset} is past the end of {shown} ({len(lines)} lines)")
    window = lines[offset - 1 : offset - 1 + limit]
    body = "\n".join(f"{n:6}\t{_cut(line)}" for n, line in enumerate(window, start=offset))
    last = offset + len(window) - 1
    if last < len(lines):
        body += (
            f"\n\n({shown} has {len(lines)} lines; showed {offset}-{last}; "
            f"use offset={last + 1} to read on)"
        )
    return body


def _cut(line: str) -> str:
    line = line.removesuffix("\r")
    if len(line) <= MAX_LINE_CHARS:
        return line
    return f"{line[:MAX_LINE_CHARS]}... [line cut, {len(line) - MAX_LINE_CHARS:,} more chars]"


def _list_dir(path: Path, shown: str) -> ToolResult:
    entries = sorted(
        display_name(e.name) + ("/" if e.is_dir() else "") for e in os.scandir(path)
    )
    body = "\n".join(entries[:MAX_DIR_ENTRIES]) or "(empty directory)"
    if len(entries) > MAX_DIR_ENTRIES:
        body += f"\n({len(entries) - MAX_DIR_ENTRIES} more entries not shown; use glob)"
    return ToolResult(True, f"{shown}/ is a directory:\n{body}", metadata={"path": shown})


def _not_found(given: str, ctx: ToolContext) -> str:
    files = ctx.workspace.files()
    # difflib is quadratic per pair: fuzzy-match only a bounded list
    close = difflib.get_close_matches(given, files[:20_000], n=3, cutoff=0.6)
    by_name = [f for f in files if Path(f).name == Path(given).name and f not in close]
    hints = [display_name(h) for h in (close + by_name)[:3]]
    suggestion = f"; did you mean {', '.join(hints)}?" if hints else ""
    return f"file not found: {given}{suggestion}"
