"""Headless output: events as text, one JSON transcript, or a JSON-lines stream.

The stream's lines are described in docs/events.md and docs/events.schema.json: every line
carries `type` and `session_id`, `init` comes first, `result` last.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Error,
    Event,
    Nested,
    Note,
    Progress,
    SessionStarted,
    Shutdown,
    SnapshotTaken,
    SubagentFinished,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    UserInput,
    event_to_json,
    inner,
)

# A turn's status as the result's subtype (the peers' names where they have one).
SUBTYPES = {"done": "success", "turn_limit": "error_max_turns",
            "context_full": "error_context_full", "interrupted": "interrupted", "error": "error"}
# Left out of the `json` transcript: the text is in `assistant`, progress is for live views.
_NOT_IN_TRANSCRIPT = (TokenDelta, Progress)


class HeadlessRenderer:
    """Feeds a session its tasks one turn at a time and renders its events until it closes;
    answers approvals with deny (there is nobody to ask).

    After each turn the next task is submitted while turns are `done` and fewer than
    `max_turns` have run; otherwise the session is shut down."""

    def __init__(self, session, fmt: str, out: Callable, out_json: Callable, err: Callable,
                 tasks: list[str] | None = None, max_turns: int | None = None):
        self.session = session
        self.fmt = fmt
        self.out, self.out_json, self.err = out, out_json, err
        self.tasks = list(tasks or [])
        self.max_turns = max_turns
        self.session_id: str | None = None
        self.turns: list[TurnFinished] = []
        self.snapshot: SnapshotTaken | None = None
        self.errors: list[str] = []
        self.transcript: list[dict[str, Any]] = []
        self.limited = False  # tasks were left for --max-turns
        self._shut = False

    def drain(self) -> str:
        """Render until the session closes; returns the last turn's status (or 'error')."""
        self._next_task()
        while not (self.session.closed and self._empty()):
            event = self.session.next_event(timeout=0.1)
            if event is not None:
                self._handle(event)
            elif getattr(self.session, "stopping", False) and not self._shut:
                self._shutdown()  # stopped between turns: the queued task will not run
        self._finish()
        return self.status

    @property
    def status(self) -> str:
        if self.limited:
            return "turn_limit"
        return self.turns[-1].status if self.turns else "error"

    def emit_progress(self, event: Progress) -> None:
        """Progress from before the session exists (the model download and load)."""
        self._handle(event)

    def _next_task(self) -> None:
        ran = len(self.turns)
        ok = not self.turns or self.turns[-1].status == "done"
        if self.tasks and ok and (self.max_turns is None or ran < self.max_turns):
            self.session.submit(UserInput(self.tasks.pop(0)))
            return
        self.limited = ok and bool(self.tasks)
        self._shutdown()

    def _shutdown(self) -> None:
        self._shut = True
        self.session.submit(Shutdown())

    def _empty(self) -> bool:
        event = self.session.next_event(timeout=0)
        if event is None:
            return True
        self._handle(event)
        return False

    def _handle(self, event: Event | Nested) -> None:
        nested = isinstance(event, Nested)  # a sub-agent's: its approvals are denied too
        if not nested or isinstance(event.event, ApprovalRequested):
            self._track(inner(event))
        line = {**event_to_json(event), "session_id": self.session_id}
        if not isinstance(inner(event), _NOT_IN_TRANSCRIPT):
            self.transcript.append(line)
        if self.fmt == "stream-json":
            self.out_json(line)
        elif self.fmt == "text":
            self._nested_text(event.event) if nested else self._text(event)
        if isinstance(event, TurnFinished):
            self._next_task()

    def _track(self, event: Event) -> None:
        if isinstance(event, SessionStarted):
            self.session_id = event.session_id
        elif isinstance(event, TurnFinished):
            self.turns.append(event)
        elif isinstance(event, SnapshotTaken):
            self.snapshot = event
        elif isinstance(event, Error):
            self.errors.append(event.message)
        elif isinstance(event, ApprovalRequested):
            self.session.submit(ApprovalDecision(event.call_id, "deny"))
            self.err(f"denied {event.name}({_brief(event.args)}): needs approval; rerun with "
                     f"--permission-mode auto or --allow '{event.suggested_rule or event.name}'")

    def _nested_text(self, event: Event) -> None:
        if isinstance(event, ToolCallStarted):
            self.err(f"  > {event.name}({_brief(event.args)})")
        elif isinstance(event, ToolCallFinished) and not event.ok:
            self.err(f"    failed: {event.content.splitlines()[0] if event.content else ''}")

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
        elif isinstance(event, TurnFinished) and self.tasks:
            self.out()  # the next task's answer starts on a line of its own
        elif isinstance(event, SubagentFinished):
            u = event.usage
            self.err(f"  [sub-agent {event.agent_id}: {event.status}, {event.steps} steps, "
                     f"{event.shared_tokens} tokens shared, {u.computed_tokens} computed, "
                     f"{u.output_tokens} generated]")

    def result(self) -> dict[str, Any]:
        """The `result` line: how the run ended, its answer, and usage over all its turns."""
        status = self.status
        last = self.turns[-1] if self.turns else None
        first_token = next((t.time_to_first_token_ms for t in self.turns
                            if t.time_to_first_token_ms is not None), None)
        return {"type": "result", "session_id": self.session_id,
                "subtype": SUBTYPES.get(status, "error"), "is_error": status != "done",
                "status": status, "result": last.text if last else "",
                "num_turns": len(self.turns), "num_steps": sum(t.steps for t in self.turns),
                "duration_ms": sum(t.duration_ms for t in self.turns),
                "time_to_first_token_ms": first_token, "usage": total_usage(self.turns),
                "errors": self.errors,
                "snapshot": asdict(self.snapshot) if self.snapshot else None}

    def _finish(self) -> None:
        result = self.result()
        if self.fmt == "stream-json":
            self.out_json(result)
        elif self.fmt == "json":
            self.out_json({**result, "events": self.transcript})
        else:
            self._text_summary(result)

    def _text_summary(self, result: dict[str, Any]) -> None:
        self.out()
        last = self.turns[-1] if self.turns else None
        if last and last.status == "context_full":
            self.err(f"error: {last.text}")
        if self.limited:
            self.err(f"stopped after {len(self.turns)} turns (--max-turns); "
                     f"{len(self.tasks)} tasks not run")
        if last:
            u = result["usage"]
            self.err(f"[{result['status']}] session {self.session_id}: {u['input_tokens']} "
                     f"input tokens ({u['cached_input_tokens']} cached), {u['output_tokens']} "
                     f"generated")


def total_usage(turns: list[TurnFinished]) -> dict[str, Any]:
    """Usage summed over turns; the context figures and speed are the last turn's."""
    if not turns:
        return {}
    out = asdict(turns[-1].usage)
    for key in ("input_tokens", "output_tokens", "cached_input_tokens", "computed_tokens"):
        out[key] = sum(getattr(t.usage, key) for t in turns)
    tiers: dict[str, int] = {}
    for t in turns:
        for tier, n in t.usage.cached_by_tier.items():
            tiers[tier] = tiers.get(tier, 0) + n
    out["cached_by_tier"] = tiers
    return out


def _brief(args: dict) -> str:
    text = json.dumps(args, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
