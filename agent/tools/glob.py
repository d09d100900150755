"""glob: files matching a pattern (`**/*.py`, `src/*.{ts,tsx}`), newest first."""

from __future__ import annotations

import os
import re

from pydantic import Field

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError, ToolResult
from agent.workspace import display_name

MAX_GLOB_RESULTS = 200


class GlobArgs(ToolArgs):
    pattern: str = Field(description="Glob such as '**/*.py' or 'src/**/test_*.{js,ts}'.")
    path: str | None = Field(
        None, description="Directory the pattern is relative to (default: the repository root)."
    )


class GlobTool(Tool):
    """File-name search over the workspace's non-ignored files."""

    name = "glob"
    description = (
        "Find files by name pattern, relative to the repository root (or to path). `*` and `?` "
        "stay within one directory, `**` crosses directories, `{a,b}` gives alternatives. "
        "Skips .git/ and git-ignored files. Newest files first. Names with unusual characters "
        'are shown quoted with escapes ("a\\nb.py"); pass them back exactly as shown.'
    )
    Args = GlobArgs
    kind = "read"
    main_arg = "pattern"

    def run(self, args: GlobArgs, ctx: ToolContext) -> ToolResult:
        ws = ctx.workspace
        base = ws.relative(ws.resolve(args.path or "."))
        if base != "." and not (ws.root / base).is_dir():
            raise ToolError(f"{base} is not a directory")
        prefix = "" if base == "." else base + "/"
        rx = glob_to_regex(args.pattern.removeprefix("./"))
        hits = [f for f in ws.files() if f.startswith(prefix) and rx.fullmatch(f[len(prefix) :])]
        hits.sort(key=lambda f: (-_mtime(os.path.join(ws.root, f)), f))
        if not hits:
            return ToolResult(True, f"No files match {args.pattern!r}.", metadata={"count": 0})
        # one name a line: names that would break the listing (newlines, bytes that are not
        # UTF-8) are quoted, and read/edit accept the quoted form back
        body = "\n".join(display_name(h) for h in hits[:MAX_GLOB_RESULTS])
        if len(hits) > MAX_GLOB_RESULTS:
            body += f"\n({len(hits) - MAX_GLOB_RESULTS} more not shown; narrow the pattern)"
        return ToolResult(True, body, metadata={"count": len(hits)})


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob over '/'-separated relative paths (`**`, `*`, `?`, `[...]`, `{a,b}`)."""
    out, i, depth = [], 0, 0
    while i < len(pattern):
        piece, i, depth = _translate_at(pattern, i, depth)
        out.append(piece)
    if depth:
        raise ToolError(f"unbalanced '{{' in glob {pattern!r}")
    return re.compile("".join(out))


def _translate_at(p: str, i: int, depth: int) -> tuple[str, int, int]:
    """The regex for the glob token at `i`, the index after it, and the brace depth."""
    if p.startswith("**/", i):
        return "(?:[^/]*/)*", i + 3, depth
    if p.startswith("**", i):
        return ".*", i + 2, depth
    c = p[i]
    if c == "[":
        end = p.find("]", i + 2)
        if end > 0:
            body = p[i + 1 : end].replace("\\", "\\\\")
            return "[" + ("^" + body[1:] if body[0] in "!^" else body) + "]", end + 1, depth
    simple = {"*": "[^/]*", "?": "[^/]", "{": "(?:", "}": ")" if depth else "\\}"}
    if c == "," and depth:
        return "|", i + 1, depth
    if c in simple:
        return simple[c], i + 1, depth + (c == "{") - (c == "}" and depth > 0)
    return re.escape(c), i + 1, depth


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
