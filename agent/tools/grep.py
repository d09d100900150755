"""grep: a Python regex over the workspace's non-ignored text files, as `path:line:text`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError, ToolResult
from agent.tools.glob import glob_to_regex

DEFAULT_MAX_RESULTS = 200
MAX_MATCH_LINE_CHARS = 300
# Bigger files are skipped: they are data or generated, and would stall the search.
MAX_GREP_FILE_BYTES = 8 * 1024 * 1024


class GrepArgs(ToolArgs):
    pattern: str = Field(description="Python regular expression, searched line by line.")
    path: str = Field(".", description="File or directory to search (default: the whole repo).")
    glob: str | None = Field(
        None,
        description="Only files matching this glob, e.g. '*.py' "
        "(no '/': matched against the file name at any depth).",
    )
    ignore_case: bool = Field(False, description="Case-insensitive search.")
    max_results: int = Field(
        DEFAULT_MAX_RESULTS, ge=1, le=2000, description="Stop after this many matching lines."
    )


class GrepTool(Tool):
    """Content search that skips `.git/`, git-ignored, binary and huge files."""

    name = "grep"
    description = (
        "Search file contents with a Python regular expression. Prints matching lines as "
        "path:line:text. Skips .git/, git-ignored files and binary files. Narrow it with path "
        "(a file or directory) and glob (e.g. '*.py', 'src/**/*.ts')."
    )
    Args = GrepArgs
    kind = "read"
    main_arg = "path"

    def run(self, args: GrepArgs, ctx: ToolContext) -> ToolResult:
        rx = _compile(args.pattern, args.ignore_case)
        files = _candidates(args, ctx)
        hits: list[str] = []
        for shown, path in files:
            if ctx.cancel.is_set():
                return ToolResult.fail("grep cancelled", partial="\n".join(hits))
            hits.extend(_search(path, shown, rx, args.max_results - len(hits)))
            if len(hits) >= args.max_results:
                note = f"\n(stopped at {args.max_results} matches; narrow the pattern or path)"
                return ToolResult(True, "\n".join(hits) + note, metadata={"capped": True})
        if not hits:
            return ToolResult(True, f"No matches for {args.pattern!r} in {args.path}")
        return ToolResult(True, "\n".join(hits), metadata={"matches": len(hits)})


def _compile(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise ToolError(f"invalid regular expression {pattern!r}: {e}") from e


def _candidates(args: GrepArgs, ctx: ToolContext) -> list[tuple[str, Path]]:
    """(shown path, real path) of the files to search, in path order."""
    ws = ctx.workspace
    target = ws.resolve(args.path)
    if not target.exists():
        raise ToolError(f"path not found: {args.path}")
    base = ws.relative(target)
    if target.is_file():
        return [(base, target)]
    prefix = "" if base == "." else base + "/"
    names = [f for f in ws.files() if f.startswith(prefix)]
    if args.glob:
        names = _filter_glob(names, args.glob)
    # a symlink may point outside the root: searching through it would leak that file
    return [(n, ws.root / n) for n in names if ws.contains(ws.root / n)]


def _filter_glob(names: list[str], glob: str) -> list[str]:
    rx = glob_to_regex(glob.removeprefix("./"))
    if "/" in glob:
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if rx.fullmatch(n.rpartition("/")[2])]


def _search(path: Path, shown: str, rx: re.Pattern[str], room: int) -> Iterator[str]:
    """Up to `room` matching lines of one file; nothing for binary, huge or unreadable files."""
    try:
        if path.stat().st_size > MAX_GREP_FILE_BYTES:
            return
        data = path.read_bytes()
    except OSError:
        return
    if b"\0" in data[:8192]:
        return
    for n, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), start=1):
        if rx.search(line):
            yield f"{shown}:{n}:{_cut(line.removesuffix(chr(13)))}"
            room -= 1
            if room <= 0:
                return


def _cut(line: str) -> str:
    if len(line) <= MAX_MATCH_LINE_CHARS:
        return line
    return line[:MAX_MATCH_LINE_CHARS] + f"... [{len(line) - MAX_MATCH_LINE_CHARS} more chars]"
