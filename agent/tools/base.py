"""The tool contract: `Tool`, what it is given (`ToolContext`) and what it returns (`ToolResult`).

`run_tool` is the only way the loop calls a tool: it validates the model's arguments and turns
every failure into a `ToolResult(ok=False)` with a one-line message, so a bad call never crashes
the loop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from agent.tool_calls import BadArguments, check_json, load_json
from agent.workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)

ToolKind = Literal["read", "edit", "exec"]

# What the model sees of a long output (shell, git): about 30K chars, head and tail kept.
MAX_TOOL_OUTPUT_CHARS = 30_000
# What the UI shows and the session stores of it (`full_output`); the whole is in a file.
MAX_STORED_OUTPUT_CHARS = 1_000_000


class ToolArgs(BaseModel):
    """Base of every tool's `Args`: unknown arguments are errors the model sees, not ignored."""

    model_config = ConfigDict(extra="forbid")


def path_field(description: str, default: Any = ...) -> Any:
    """A `path` argument that also accepts `file_path` (the name Claude-style models use)."""
    return Field(
        default, validation_alias=AliasChoices("path", "file_path"), description=description
    )


class ToolError(Exception):
    """A failure the model can act on; its message becomes the tool result as is."""


@dataclass(slots=True)
class ToolResult:
    """What one tool call produced.

    `content` is what the model sees, already cut to size. `full_output` is the output of a
    command (shell, git) for the UI and the store, cut at MAX_STORED_OUTPUT_CHARS (the whole is
    in the file `metadata["output_file"]`); None where `content` is the whole result.
    `metadata` carries JSON-able facts for front ends: `diff` for edits, `exit_code` and `pid`
    for commands, `path` touched, `output_file` where a long output was saved.
    """

    ok: bool
    content: str
    full_output: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fail(cls, content: str, **metadata: Any) -> ToolResult:
        """A failed call with a message for the model."""
        return cls(ok=False, content=content, metadata=metadata)


class FileState(NamedTuple):
    """A file's content as the model last saw it."""

    sha256: str
    mtime_ns: int
    size: int


class FileStateTracker:
    """Remembers, per real path, the content the model last saw through read, edit or write.

    Edits and overwrites are refused unless the file was seen and is unchanged since: comparing
    content hashes (not only mtimes) so a same-size change within the timestamp granularity is
    still caught. Thread-safe.
    """

    def __init__(self) -> None:
        self._seen: dict[Path, FileState] = {}
        self._lock = threading.Lock()

    def record(self, path: Path, data: bytes) -> None:
        """Note that the model now knows `path` holds `data`."""
        mtime = path.stat().st_mtime_ns if path.exists() else 0
        with self._lock:
            self._seen[path] = FileState(_sha256(data), mtime, len(data))

    def get(self, path: Path) -> FileState | None:
        """The recorded state of `path`, or None if the model never saw it."""
        with self._lock:
            return self._seen.get(path)

    def stale_reason(self, path: Path, current: bytes, shown: str) -> str | None:
        """Why `path` may not be modified now (never read, or changed since), or None if it may."""
        seen = self.get(path)
        if seen is None:
            return f"{shown} has not been read yet; read it first, then edit"
        if seen.sha256 != _sha256(current):
            return f"{shown} changed on disk since you last read it; read it again, then edit"
        return None

    def changed(self) -> list[Path]:
        """Recorded files whose content differs now (or that are gone)."""
        with self._lock:
            items = list(self._seen.items())
        return [p for p, s in items if not p.is_file() or _sha256(p.read_bytes()) != s.sha256]

    def forget(self, path: Path) -> None:
        """Drop what is known about `path` (e.g. after it was deleted)."""
        with self._lock:
            self._seen.pop(path, None)

    def copy(self) -> FileStateTracker:
        """A tracker that knows what this one knows now (a sub-agent's, forked with the
        context); the two then learn apart."""
        twin = FileStateTracker()
        with self._lock:
            twin._seen = dict(self._seen)
        return twin


class ReadPolicy(Protocol):
    """Which files a tool may show the contents of on its own (the session's Permissions)."""

    def may_read(self, path: str | Path) -> bool:
        """Whether no read deny rule covers `path` (relative to the root, or absolute)."""

    def denied_read_patterns(self) -> list[str]:
        """The fnmatch patterns of the read deny rules."""


@dataclass
class ToolContext:
    """What a tool may use. One per session: the tracker must outlive turns.

    The loop clears `cancel` when a turn starts and sets it on Interrupt; long-running tools
    (shell, grep) check it and stop early. `read_policy` keeps read deny rules for files a tool
    reads on its own (grep's files, git's pathspecs); None: no such rules.
    """

    workspace: Workspace
    files: FileStateTracker = field(default_factory=FileStateTracker)
    cancel: threading.Event = field(default_factory=threading.Event)
    read_policy: ReadPolicy | None = None


class Tool(ABC):
    """One tool the model can call.

    Contract: subclasses set `name`, `description`, `Args` (a pydantic model of the arguments,
    whose field descriptions reach the model), `kind` ("read" | "edit" | "exec", what permissions
    gate) and `main_arg` (the argument permission rules match against). `run` gets validated
    `Args` and the session's context; it returns a `ToolResult`, or raises ToolError /
    WorkspaceError with a one-line message for the model. Paths must go through
    `ctx.workspace.resolve`. `run` may be called from a worker thread; it must return promptly
    once `ctx.cancel` is set. `close` releases what the tool holds at session end.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]
    kind: ClassVar[ToolKind]
    main_arg: ClassVar[str | None] = None
    # Calls of this tool in one reply go to `run_calls` together (task: side by side).
    batches: ClassVar[bool] = False

    @abstractmethod
    def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        """Do the call; `args` is an instance of `self.Args`."""

    def run_calls(self, calls: list[tuple[str, Any]], ctx: ToolContext) -> list[ToolResult]:
        """Several calls of one reply, as (call id, validated `Args`), in order; the results
        in the same order. Tools with `batches` run them together; by default one by one."""
        return [self.run(args, ctx) for _, args in calls]

    def kind_for(self, args: Mapping[str, Any]) -> ToolKind:
        """The kind of this particular call (git status reads, git commit executes)."""
        return self.kind

    def rule_subject(self, args: Mapping[str, Any]) -> str:
        """The main argument as permission rules match it (git trims its subcommand)."""
        if self.main_arg is None:
            return ""
        value = args.get(self.main_arg)
        if value is None and self.main_arg == "path":
            value = args.get("file_path")  # the alias file tools accept
        return "" if value is None else str(value)

    def schema(self) -> dict[str, Any]:
        """The OpenAI / Hermes function schema: stable, so it can sit in the cached prefix."""
        params = _tidy_schema(self.Args.model_json_schema())
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }

    def close(self) -> None:
        """Release processes or files the tool holds; called once when the session ends."""
        return None  # most tools hold nothing


def run_tool(tool: Tool, raw_args: Mapping[str, Any] | str | None, ctx: ToolContext) -> ToolResult:
    """Validate `raw_args` and run `tool`; every failure becomes a ToolResult with ok=False."""
    try:
        args = tool.Args.model_validate(_as_mapping(raw_args, tool.name))
        return tool.run(args, ctx)
    except Exception as e:
        return _failure(tool, e)


def run_tool_calls(tool: Tool, calls: list[tuple[str, Mapping[str, Any] | str | None]],
                   ctx: ToolContext) -> list[ToolResult]:
    """`run_tool` for several calls of one reply, (call id, raw arguments) each: the valid
    ones go to `tool.run_calls` together; each failure is that call's ToolResult."""
    results: list[ToolResult | None] = [None] * len(calls)
    valid: list[tuple[int, str, Any]] = []
    for i, (call_id, raw) in enumerate(calls):
        try:
            valid.append((i, call_id, tool.Args.model_validate(_as_mapping(raw, tool.name))))
        except Exception as e:
            results[i] = _failure(tool, e)
    try:
        ran = tool.run_calls([(call_id, args) for _, call_id, args in valid], ctx)
    except Exception as e:
        ran = [_failure(tool, e)] * len(valid)
    for (i, _, _), result in zip(valid, ran, strict=True):
        results[i] = result
    return results  # type: ignore[return-value]


def _failure(tool: Tool, e: Exception) -> ToolResult:
    """The ToolResult a failed call gets (a bug's trace is logged for us)."""
    if isinstance(e, ValidationError):
        return ToolResult.fail(f"{tool.name}: bad arguments: {_validation_summary(e)}")
    if isinstance(e, (ToolError, WorkspaceError)):
        return ToolResult.fail(str(e))
    log.warning("tool %s failed", tool.name, exc_info=e)
    first = (str(e).strip().splitlines() or [""])[0]
    return ToolResult.fail(f"{tool.name} failed: {type(e).__name__}: {first}")


def clip_text(text: str, where: str | Path, limit: int = MAX_TOOL_OUTPUT_CHARS) -> str:
    """`text` cut to about `limit` chars, head and tail kept, with a marker in the middle saying
    how much was dropped and that the whole output is in the file `where`."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit // 2], text[-(limit // 2) :]
    dropped = len(text) - len(head) - len(tail)
    return (
        f"{head}\n\n[... {dropped:,} chars omitted; the full output ({len(text):,} chars) is "
        f"in {where}; read it with read(path, offset=...) ...]\n\n{tail}"
    )


def save_output(ctx: ToolContext, label: str, text: str) -> Path:
    """Write `text` to a new file in the workspace's output directory."""
    path = new_output_path(ctx, label)
    path.write_text(text, encoding="utf-8", errors="replace")
    return path


def new_output_path(ctx: ToolContext, label: str) -> Path:
    """A fresh file name in the workspace's output directory (created if missing)."""
    out_dir = ctx.workspace.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{label}-{uuid.uuid4().hex[:10]}.log"


def _as_mapping(raw: Mapping[str, Any] | str | None, tool_name: str) -> Mapping[str, Any]:
    # Some models send the arguments as a JSON string, or nothing for a no-argument call.
    if raw is None:
        return {}
    try:
        if isinstance(raw, str):
            raw = load_json(raw) if raw.strip() else {}
        else:
            check_json(raw)
    except BadArguments as e:
        raise ToolError(f"{tool_name}: bad arguments: {e}; send a JSON object") from None
    if not isinstance(raw, Mapping):
        raise ToolError(f"arguments must be a JSON object, got {type(raw).__name__}")
    return raw


def _validation_summary(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg'].lower()}")
    return "; ".join(parts)


def _tidy_schema(schema: Any) -> Any:
    """Pydantic's schema made lean for the prompt: no "title" keys (they repeat the field names),
    and `anyOf [X, null]` of an optional argument shown as plain X (leaving it out means null)."""
    if isinstance(schema, list):
        return [_tidy_schema(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    options = schema.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        rest = {
            k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)
        }
        schema = {**next(o for o in options if o != {"type": "null"}), **rest}
    return {
        k: _tidy_schema(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
