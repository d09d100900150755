"""edit: replace an exact string in a file the model has read, and report the diff."""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import Field

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError, ToolResult, path_field

# The diff shown to the model after an edit; the whole diff stays in metadata.
MAX_SHOWN_DIFF_CHARS = 4000


class EditArgs(ToolArgs):
    path: str = path_field("File to edit, relative to the repository root.")
    old_string: str = Field(description="Exact text to replace, including its whitespace.")
    new_string: str = Field(description="Text to put in its place.")
    replace_all: bool = Field(False, description="Replace every occurrence, not just one.")


class EditTool(Tool):
    """Exact-string replacement, refused on files the model has not seen in their current state."""

    name = "edit"
    description = (
        "Replace old_string with new_string in a file. old_string must match the file exactly "
        "(whitespace and indentation included) and be unique, unless replace_all is true; add "
        "surrounding lines to make it unique. The file must have been read first, and not "
        "changed since. Use write to create new files."
    )
    Args = EditArgs
    kind = "edit"
    main_arg = "path"

    def run(self, args: EditArgs, ctx: ToolContext) -> ToolResult:
        path = ctx.workspace.resolve(args.path, write=True)
        shown = ctx.workspace.shown(path)
        if not path.is_file():
            raise ToolError(f"file not found: {shown}; use write to create a file")
        data = ctx.workspace.read_bytes(path)
        stale = ctx.files.stale_reason(path, data, shown)
        if stale:
            raise ToolError(stale)
        before = decode(data)
        after, count = _replace(before, args, shown)
        write_text(path, after, ctx)
        diff = unified_diff(before, after, shown)
        note = f"Edited {shown} ({count} replacement{'s' if count > 1 else ''}).\n"
        meta = {"path": shown, "diff": diff, "replacements": count}
        return ToolResult(True, note + _shown_diff(diff), metadata=meta)


def _replace(text: str, args: EditArgs, shown: str) -> tuple[str, int]:
    old, new = args.old_string, args.new_string
    if not old:
        raise ToolError("old_string is empty; give the exact text to replace")
    if old == new:
        raise ToolError("old_string and new_string are the same; nothing to change")
    if old not in text and "\r\n" in text:
        # models write "\n"; a CRLF file should still match and stay CRLF
        old, new = _crlf(old), _crlf(new)
    count = text.count(old)
    if count == 0:
        raise ToolError(
            f"old_string not found in {shown}; read the file and copy the text "
            "exactly, including whitespace"
        )
    if count > 1 and not args.replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {shown}; add surrounding context "
            "to make it unique, or set replace_all=true"
        )
    return text.replace(old, new) if args.replace_all else text.replace(old, new, 1), count


def _crlf(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\n", "\r\n")


def _shown_diff(diff: str) -> str:
    if len(diff) <= MAX_SHOWN_DIFF_CHARS:
        return diff
    return diff[:MAX_SHOWN_DIFF_CHARS] + f"\n[... diff cut, {len(diff):,} chars in all]"


def decode(data: bytes) -> str:
    """File bytes as text; undecodable bytes survive a round trip through `encode`."""
    return data.decode("utf-8", errors="surrogateescape")


def write_text(path: Path, text: str, ctx: ToolContext) -> None:
    """Write `text` (as `decode` read it) and record it as seen: the model wrote it."""
    data = text.encode("utf-8", errors="surrogateescape")
    ctx.workspace.write_bytes(path, data)
    ctx.files.record(path, data)


def unified_diff(before: str, after: str, shown: str, *, new_file: bool = False) -> str:
    """A `git diff`-style unified diff of one file."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile="/dev/null" if new_file else f"a/{shown}",
        tofile=f"b/{shown}",
    )
    diff = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    # undecodable bytes (kept as surrogates) cannot go into JSON events: show them as U+FFFD
    return diff.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
