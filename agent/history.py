"""A saved session's earlier turns as the events a front end already knows how to show."""

from __future__ import annotations

from collections.abc import Iterator

from agent.events import (
    Event,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    Usage,
)
from agent.tool_calls import parse_tool_calls

_USAGE_FIELDS = set(Usage.__dataclass_fields__)


def replay(events) -> Iterator[Event]:
    """Store events (oldest first, superseded ones left out) -> the events of those turns."""
    text = ""
    for e in events:
        p = e.payload
        if e.kind == "message" and p.get("role") == "user" and e.turn > 0:
            if not p.get("content", "").startswith("[note]"):
                yield TurnStarted(e.turn, p.get("content", ""))
        elif e.kind == "message" and p.get("role") == "assistant":
            text = parse_tool_calls(p.get("content", "")).text
            if text:
                yield TokenDelta(text)
        elif e.kind == "tool_call":
            yield ToolCallStarted(p["id"], p["name"], p.get("arguments", {}))
        elif e.kind == "tool_result":
            yield ToolCallFinished(p["id"], p["name"], p.get("ok", False), p.get("content", ""),
                                   p.get("metadata") or {})
        elif e.kind == "usage":
            usage = Usage(**{k: v for k, v in p.items() if k in _USAGE_FIELDS})
            yield TurnFinished(e.turn, p.get("status", "done"), text, usage)
