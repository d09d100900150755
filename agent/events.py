"""Everything the agent tells a front end, and everything a front end asks of it.

Front ends (the TUI, the headless JSON stream, tests) see only these dataclasses: `Op`s go in
through `AgentHandle.submit`, `Event`s come out of `AgentHandle.next_event`. The session store
records the same events (`RECORDED`, in their stream-json form), and a resumed session is
rebuilt from exactly those: its messages from `MessageAdded`, its history from the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

# ---- ops: front end -> agent ------------------------------------------------------------


@dataclass(frozen=True)
class UserInput:
    """A user message; queued if a turn is running."""

    text: str


@dataclass(frozen=True)
class ApprovalDecision:
    """The answer to an ApprovalRequested: allow once, always allow `rule`, or deny."""

    call_id: str
    decision: Literal["allow", "always", "deny"]
    rule: str | None = None  # for "always", e.g. "shell(git *)"


@dataclass(frozen=True)
class Interrupt:
    """Stop the running turn as soon as possible (generation and tools are cancelled)."""


@dataclass(frozen=True)
class Shutdown:
    """Finish after the ops queued before it: flush the store and the KV cache, then stop.

    To stop a running turn first, submit Interrupt before Shutdown."""


Op = UserInput | ApprovalDecision | Interrupt | Shutdown

# ---- events: agent -> front end -----------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token accounting of one turn, named as the OpenAI-style peers name it: input tokens
    appended to the context (served from cache, split by tier, or computed) and output tokens
    generated. `cached_input_tokens` never exceeds `input_tokens`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cached_by_tier: dict[str, int] = field(default_factory=dict)
    computed_tokens: int = 0
    context_tokens: int = 0  # the whole resident context after the turn
    context_window: int = 0
    decode_tok_s: float = 0.0


# Usage as an older agent recorded it (read back from the store under the new names).
_OLD_USAGE_NAMES = {"prompt_tokens": "input_tokens", "completion_tokens": "output_tokens",
                    "cached_tokens": "cached_input_tokens"}


@dataclass(frozen=True)
class SessionStarted:
    """The session is open (`init` in the stream, always its first event for the session):
    what runs, where, with which tools and permissions, in how large a window."""

    session_id: str
    model: str
    repo_root: str
    resumed: bool
    context_window: int
    tools: list[str] = field(default_factory=list)
    permission_mode: str = ""
    plan: dict[str, Any] | None = None  # the memory plan, for the local runtime


@dataclass(frozen=True)
class Progress:
    """Long work: the model download, repository ingestion, KV restore, a long prefill.
    total 0 = unknown."""

    kind: Literal["download", "load", "ingest", "restore", "prefill"]
    done: int
    total: int
    unit: str = "tokens"


@dataclass(frozen=True)
class TurnStarted:
    turn: int
    prompt: str


@dataclass(frozen=True)
class TokenDelta:
    """Streamed assistant text (tool-call markup is not streamed as text)."""

    text: str


@dataclass(frozen=True)
class AssistantMessage:
    """One model step's complete reply: its visible text and the tool calls it made
    (`[{"id", "name", "arguments"}]`, the calls as parsed, malformed ones with an `error`)."""

    turn: int
    step: int
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str


@dataclass(frozen=True)
class ToolCallStarted:
    call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolCallFinished:
    call_id: str
    name: str
    ok: bool
    content: str  # what the model saw
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. {"diff": "..."}


@dataclass(frozen=True)
class ApprovalRequested:
    call_id: str
    name: str
    args: dict[str, Any]
    suggested_rule: str | None = None


@dataclass(frozen=True)
class Note:
    """A factual note: appended to the context (files changed outside the agent) or only told
    to the user (a turn cut short by a crash, a smaller snapshot)."""

    text: str


@dataclass(frozen=True)
class MessageAdded:
    """A message joined the model's context (system, user, note, assistant, tool).

    Recorded, not shown: a resume rebuilds the conversation's messages from these."""

    turn: int
    role: str
    content: str
    name: str = ""


@dataclass(frozen=True)
class SnapshotTaken:
    """What the repository snapshot inlined and left out (lists capped; counts are whole)."""

    inlined: list[str]
    excerpts: dict[str, str]  # path -> the lines shown, for files inlined in part
    left_out: list[str]  # text files over the token budget
    listed: list[str]  # binary, huge, linked or oddly named files, with their kind
    inlined_count: int
    left_out_count: int
    listed_count: int
    tokens: int
    budget: int
    summary: str  # the one line text mode shows


@dataclass(frozen=True)
class TurnFinished:
    turn: int
    # context_full: the window has no room for the next step; `text` says what to do.
    status: Literal["done", "turn_limit", "interrupted", "context_full", "error"]
    text: str
    usage: Usage
    steps: int = 0  # model calls the turn made
    duration_ms: int = 0
    time_to_first_token_ms: int | None = None  # first generated token of the turn, if any


@dataclass(frozen=True)
class KVStats:
    """Where the session's KV pages live now."""

    device_pages: int
    host_pages: int
    disk_pages: int
    page_size: int


@dataclass(frozen=True)
class Error:
    message: str
    fatal: bool = False


@dataclass(frozen=True)
class ApprovalGiven:
    """What the user answered to an ApprovalRequested (recorded with the turn)."""

    call_id: str
    decision: str
    rule: str | None = None


@dataclass(frozen=True)
class SubagentStarted:
    """A `task` call started a sub-agent: a fork of this session's context at the call
    (`shared_tokens` of it, served without computing them), or one resumed."""

    call_id: str  # the parent's task call
    agent_id: str  # the sub-agent's session id
    description: str
    prompt: str
    tools: list[str]
    max_steps: int
    shared_tokens: int
    fork_ms: float = 0.0  # forking the context (a page copy on the local runtime)
    resumed: bool = False


@dataclass(frozen=True)
class SubagentFinished:
    """A sub-agent ended; `text` went back to the parent as the task's result. `usage` is
    what the sub-agent itself added (computed or served from cache) and generated, on top of
    the `shared_tokens` it started with."""

    call_id: str
    agent_id: str
    status: str  # a TurnFinished status
    text: str
    steps: int
    shared_tokens: int
    usage: Usage
    duration_ms: int = 0
    time_to_first_token_ms: int | None = None


Event = (SessionStarted | Progress | TurnStarted | TokenDelta | AssistantMessage
         | ToolCallStarted | ToolCallFinished | ApprovalRequested | ApprovalGiven | Note
         | MessageAdded | SnapshotTaken | TurnFinished | KVStats | Error | SubagentStarted
         | SubagentFinished)


@dataclass(frozen=True)
class Nested:
    """An event of a sub-agent, as its parent's stream carries it: in stream-json the inner
    event's line with `parent_call_id` (the parent's task call) and `agent_id` added."""

    parent_call_id: str
    agent_id: str
    event: Event

# The `type` of each event in stream-json (docs/events.md) and its kind in the store.
_TYPE_NAMES = {
    SessionStarted: "init", AssistantMessage: "assistant", Progress: "progress",
    TurnStarted: "turn_started",
    TokenDelta: "message_delta", ToolCallStarted: "tool_started", ToolCallFinished: "tool_finished",
    ApprovalRequested: "approval_requested", ApprovalGiven: "approval_given", Note: "note",
    MessageAdded: "message_added", TurnFinished: "turn_finished", KVStats: "kv_stats",
    Error: "error", SnapshotTaken: "snapshot", SubagentStarted: "subagent_started",
    SubagentFinished: "subagent_finished",
}
_BY_NAME = {name: cls for cls, name in _TYPE_NAMES.items()}

# What the store keeps of a session: everything but the transient (streamed text, progress,
# page counts). The streamed text is in the assistant's MessageAdded.
RECORDED: tuple[type, ...] = (TurnStarted, ToolCallStarted, ToolCallFinished, ApprovalRequested,
                              ApprovalGiven, Note, MessageAdded, SnapshotTaken, TurnFinished,
                              Error, SubagentStarted, SubagentFinished)
RECORD_ONLY: tuple[type, ...] = (MessageAdded,)  # recorded, never put on the event queue


def event_name(event_type: type) -> str:
    """The event's `type` in stream-json and its kind in the session store."""
    return _TYPE_NAMES[event_type]


def event_to_json(event: Event | Nested) -> dict[str, Any]:
    """The stream-json form: `{"type": ..., **fields}` (a nested event's with its parent)."""
    if isinstance(event, Nested):
        return {**event_to_json(event.event), "parent_call_id": event.parent_call_id,
                "agent_id": event.agent_id}
    return {"type": _TYPE_NAMES[type(event)], **dataclasses.asdict(event)}


def inner(event: Event | Nested) -> Event:
    """The event itself, a sub-agent's taken out of its Nested wrapper."""
    return event.event if isinstance(event, Nested) else event


def event_from_json(kind: str, payload: dict[str, Any]) -> Event | None:
    """An event read back from the store (None for kinds that are not events: the store's own,
    or ones written by an older agent)."""
    cls = _BY_NAME.get(kind)
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in payload.items() if k in names}
    if cls in (TurnFinished, SubagentFinished):
        values["usage"] = _usage(values.get("usage") or {})
    try:
        return cls(**values)
    except TypeError:  # a payload missing a field: not an event of this version
        return None


def _usage(data: dict[str, Any]) -> Usage:
    names = {f.name for f in dataclasses.fields(Usage)}
    data = {_OLD_USAGE_NAMES.get(k, k): v for k, v in data.items()}
    return Usage(**{k: v for k, v in data.items() if k in names})
