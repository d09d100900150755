"""A saved session read back: the events the store recorded, as the agent emitted them.

The conversation's messages are rebuilt from exactly its `MessageAdded` events; what a front end
shows of earlier turns is the same recorded events, with the assistant's replies as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from agent.events import (
    Error,
    Event,
    MessageAdded,
    Note,
    SnapshotTaken,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    event_from_json,
)
from agent.tool_calls import parse_tool_calls

_SHOWN = (TurnStarted, ToolCallStarted, ToolCallFinished, Note, SnapshotTaken, TurnFinished,
          Error)


def recorded(store_events: Iterable) -> list[tuple[int, Event]]:
    """Store records (oldest first, superseded ones left out) -> (turn, event) pairs; records
    that are not events (the store's own, or an older agent's) are skipped."""
    out = []
    for record in store_events:
        event = event_from_json(record.kind, record.payload)
        if event is not None:
            out.append((record.turn, event))
    return out


def messages(events: Iterable[tuple[int, Event]]) -> list[dict[str, str]]:
    """The conversation's messages, in the order they joined the context."""
    out = []
    for _, e in events:
        if isinstance(e, MessageAdded):
            message = {"role": e.role, "content": e.content}
            if e.name:
                message["name"] = e.name
            out.append(message)
    return out


def finished_turns(events: Iterable[tuple[int, Event]]) -> list[int]:
    """Turns that ended (a TurnFinished was recorded), oldest first."""
    return [turn for turn, e in events if isinstance(e, TurnFinished)]


def replay(events: Iterable[tuple[int, Event]]) -> Iterator[Event]:
    """The earlier turns as a front end shows them (the TUI on resume)."""
    for _, e in events:
        if isinstance(e, MessageAdded) and e.role == "assistant":
            text = parse_tool_calls(e.content).text
            if text:
                yield TokenDelta(text)
        elif isinstance(e, _SHOWN):
            yield e


def conversation_state(store, session_id: str) -> dict[str, Any]:
    """What a conversation is rebuilt from: the token log, the messages of the recorded
    events, and the ids of the last reply (the template text still owed after it);
    `has_system` says whether the log starts with its system message."""
    segments = store.segments(session_id)
    last = segments[-1] if segments else None
    msgs = messages(recorded(store.events(session_id)))
    return {"messages": msgs,
            "tokens": [i for seg in segments for i in seg.ids],
            "reply_ids": list(last.ids) if last and last.kind == "assistant" else None,
            "has_system": bool(segments) and segments[0].kind == "system" and
            bool(msgs) and msgs[0]["role"] == "system"}
