"""grep: a Python regex over the workspace's non-ignored text files, as `path:line:text`.

The search runs in a worker process (agent/tools/grep_worker.py) that is killed at the timeout or
on cancel: a regex that backtracks for minutes (`(A+)+B` on a long line) holds that process, not
this one's GIL. Files a `read` deny rule covers are not searched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

from pydantic import Field

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError, ToolResult
from agent.tools.glob import glob_to_regex
from agent.tools.processes import wait_or_stop
from agent.workspace import display_name

DEFAULT_MAX_RESULTS = 200
MAX_MATCH_LINE_CHARS = 300
# Bigger files are skipped: they are data or generated, and would stall the search.
MAX_GREP_FILE_BYTES = 8 * 1024 * 1024
GREP_TIMEOUT_S = 30.0
_WORKER = Path(__file__).with_name("grep_worker.py")
_POLL_S = 0.02


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

    def __init__(self, timeout_s: float = GREP_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def run(self, args: GrepArgs, ctx: ToolContext) -> ToolResult:
        _compile(args.pattern, args.ignore_case)  # a bad pattern is the model's error, at once
        files = _candidates(args, ctx)
        found, stopped = _run_worker(args, [str(p) for _, p in files], ctx, self.timeout_s)
        hits = [f"{display_name(files[i][0])}:{n}:{_cut(text)}" for i, n, text in found]
        if stopped:
            note = f"grep {stopped}; {len(hits)} matches found before that"
            return ToolResult(False, "\n".join([*hits, note]), metadata={"stopped": stopped})
        if len(hits) >= args.max_results:
            note = f"\n(stopped at {args.max_results} matches; narrow the pattern or path)"
            return ToolResult(True, "\n".join(hits) + note, metadata={"capped": True})
        if not hits:
            return ToolResult(True, f"No matches for {args.pattern!r} in {args.path}")
        return ToolResult(True, "\n".join(hits), metadata={"matches": len(hits)})


def _run_worker(args: GrepArgs, paths: list[str], ctx: ToolContext, timeout_s: float
                ) -> tuple[list[tuple[int, int, str]], str | None]:
    """The worker's hits, and why it was stopped early (timeout, cancel) or None."""
    request = json.dumps({"pattern": args.pattern, "ignore_case": args.ignore_case,
                          "paths": paths, "room": args.max_results,
                          "max_file_bytes": MAX_GREP_FILE_BYTES})
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(_WORKER)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    lines: list[bytes] = []
    threads = [threading.Thread(target=_feed, args=(proc, request), daemon=True),
               threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)]
    for t in threads:
        t.start()
    stopped = wait_or_stop(proc, timeout_s, ctx.cancel, _POLL_S)
    if stopped and stopped.startswith("timed out"):
        stopped += " (the pattern may backtrack badly)"
    if stopped:
        proc.kill()
    proc.wait()
    threads[1].join(timeout=5)
    return [tuple(json.loads(line)) for line in list(lines) if line.strip()], stopped


def _feed(proc: subprocess.Popen[bytes], request: str) -> None:
    try:
        proc.stdin.write(request.encode("utf-8", errors="surrogateescape"))
        proc.stdin.close()
    except OSError:
        pass  # it was killed before it read everything


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
    may_read = ctx.read_policy.may_read if ctx.read_policy else None
    if target.is_file():
        if may_read and not may_read(base):
            raise ToolError(f"{args.path} is covered by a read deny rule")
        return [(base, target)]
    prefix = "" if base == "." else base + "/"
    names = [f for f in ws.files() if f.startswith(prefix)]
    if args.glob:
        names = _filter_glob(names, args.glob)
    # a symlink may point outside the root: searching through it would leak that file
    names = [n for n in names if ws.contains(ws.root / n)]
    return [(n, ws.root / n) for n in names if may_read is None or may_read(n)]


def _filter_glob(names: list[str], glob: str) -> list[str]:
    rx = glob_to_regex(glob.removeprefix("./"))
    if "/" in glob:
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if rx.fullmatch(n.rpartition("/")[2])]


def _cut(line: str) -> str:
    if len(line) <= MAX_MATCH_LINE_CHARS:
        return line
    return line[:MAX_MATCH_LINE_CHARS] + f"... [{len(line) - MAX_MATCH_LINE_CHARS} more chars]"
