"""Headless output: events as text, one JSON result, or a JSON-lines stream."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Error,
    Event,
    Note,
    SessionStarted,
    SnapshotTaken,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    event_to_json,
)


class HeadlessRenderer:
    """Consumes a session's events until it closes; answers approvals with deny."""

    def __init__(self, session, fmt: str, out: Callable, out_json: Callable, err: Callable):
        self.session = session
        self.fmt = fmt
        self.out, self.out_json, self.err = out, out_json, err
        self.session_id = ""
        self.last: TurnFinished | None = None
        self.snapshot: SnapshotTaken | None = None
        self.errors: list[str] = []

    def drain(self) -> str:
        """Render until the session closes; returns the last turn's status (or 'error')."""
        while not (self.session.closed and self._empty()):
            event = self.session.next_event(timeout=0.1)
            if event is not None:
                self._handle(event)
        self._finish()
        if self.errors and self.last is None:
            return "error"
        return self.last.status if self.last else "error"

    def _empty(self) -> bool:
        event = self.session.next_event(timeout=0)
        if event is None:
            return True
        self._handle(event)
        return False

    def _handle(self, event: Event) -> None:
        if isinstance(event, SessionStarted):
            self.session_id = event.session_id
        elif isinstance(event, TurnFinished):
            self.last = event
        elif isinstance(event, SnapshotTaken):
            self.snapshot = event
        elif isinstance(event, Error):
            self.errors.append(event.message)
        elif isinstance(event, ApprovalRequested):
            self.session.submit(ApprovalDecision(event.call_id, "deny"))
            self.err(f"denied {event.name}({_brief(event.args)}): needs approval; rerun with "
                     f"--permission-mode auto or --allow '{event.suggested_rule or event.name}'")
        if self.fmt == "stream-json":
            self.out_json(event_to_json(event))
        elif self.fmt == "text":
            self._text(event)

    def _text(self, event: Event) -> None:
        if isinstance(event, TokenDelta):
            self.out(event.text, end="")
        elif isinstance(event, ToolCallStarted):
            self.err(f"\n> {event.name}({_brief(event.args)})")
        elif isinstance(event, ToolCallFinished) and not event.ok:
            self.err(f"  failed: {event.content.splitlines()[0] if event.content else ''}")
        elif isinstance(event, Error):
            self.err(f"error: {event.message}")
        elif isinstance(event, Note) and event.text:
            self.err(f"note: {event.text.splitlines()[0]}")
        elif isinstance(event, SnapshotTaken):
            names = ", ".join(event.inlined[:8]) + (", ..." if event.inlined_count > 8 else "")
            self.err(f"snapshot: {event.summary}" + (f": {names}" if names else ""))

    def _finish(self) -> None:
        result = {"type": "result", "session_id": self.session_id,
                  "status": self.last.status if self.last else "error",
                  "text": self.last.text if self.last else "",
                  "usage": asdict(self.last.usage) if self.last else {},
                  "errors": self.errors,
                  "snapshot": asdict(self.snapshot) if self.snapshot else None}
        if self.fmt == "text":
            self.out()
            if self.last and self.last.status == "context_full":
                self.err(f"error: {self.last.text}")
            if self.last:
                u = self.last.usage
                self.err(f"[{result['status']}] session {self.session_id}: {u.prompt_tokens} "
                         f"prompt tokens ({u.cached_tokens} cached), {u.completion_tokens} "
                         f"generated")
        else:
            self.out_json(result)


def _brief(args: dict) -> str:
    text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
