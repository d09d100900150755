"""write: create a file (and its parent directories), or overwrite one the model has read."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.repo_files import looks_like_path
from agent.tools.base import Tool, ToolArgs, ToolContext, ToolError, ToolResult, path_field
from agent.tools.edit import decode, unified_diff, write_text


class WriteArgs(ToolArgs):
    path: str = path_field("File to write, relative to the repository root.")
    content: str = Field(description="The whole new content of the file.")


class WriteTool(Tool):
    """Whole-file writes; overwriting needs a prior read, as for edit."""

    name = "write"
    description = (
        "Write a file with the given content, creating parent directories as needed. To "
        "overwrite an existing file, read it first; prefer edit for changes to existing files."
    )
    Args = WriteArgs
    kind = "edit"
    main_arg = "path"

    def run(self, args: WriteArgs, ctx: ToolContext) -> ToolResult:
        path = ctx.workspace.resolve(args.path, write=True)
        shown = ctx.workspace.shown(path)
        if not path.exists() and not looks_like_path(args.path):
            raise ToolError(f"{args.path!r} does not look like a file path; give the name with "
                            f"its extension or folder (./{args.path.strip()} for a bare name)")
        if path.is_dir():
            raise ToolError(f"{shown} is a directory; give a file path")
        existed = path.exists()
        before = self._current(path, shown, ctx) if existed else ""
        write_text(path, args.content, ctx)
        diff = unified_diff(before, args.content, shown, new_file=not existed)
        lines = args.content.count("\n") + (not args.content.endswith("\n") and bool(args.content))
        verb = "Overwrote" if existed else "Created"
        meta = {"path": shown, "diff": diff, "created": not existed}
        return ToolResult(True, f"{verb} {shown} ({lines} lines).", metadata=meta)

    @staticmethod
    def _current(path: Path, shown: str, ctx: ToolContext) -> str:
        data = ctx.workspace.read_bytes(path)
        stale = ctx.files.stale_reason(path, data, shown)
        if stale:
            raise ToolError(stale.replace("then edit", "then write"))
        return decode(data)
