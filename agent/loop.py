"""The agent loop: render -> extend -> generate -> parse -> dispatch tools -> record."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.backends.base import AppendResult, Conversation, GenParams
from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Event,
    Progress,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    Usage,
)
from agent.tool_calls import ToolCall, parse_tool_calls
from agent.tools.base import Tool, ToolContext, ToolResult, run_tool

PROGRESS_MIN_TOKENS = 2048


class Recorder(Protocol):
    """Where the loop writes what happened (the session store, or nothing in tests)."""

    def event(self, turn: int, kind: str, payload: dict[str, Any]) -> None: ...

    def tokens(self, turn: int, kind: str, ids: list[int], text: str) -> None: ...


class NullRecorder:
    def event(self, turn: int, kind: str, payload: dict[str, Any]) -> None:
        return None

    def tokens(self, turn: int, kind: str, ids: list[int], text: str) -> None:
        return None


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int = 12  # model calls per user message; hitting it ends the turn as turn_limit
    gen: GenParams = GenParams()
    # "auto" | "required" | "none" | "first" (the first reply of a turn calls a tool, the next
    # answers in words: for models not trained to use tools); None: the backend's default.
    tool_choice: str | None = None


@dataclass
class _TurnTally:
    prompt: int = 0
    cached: int = 0
    computed: int = 0
    completion: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    decode_tok_s: float = 0.0

    def add_server_usage(self, usage: dict[str, Any]) -> None:
        """A remote server's own count of the prompt it served from its prefix cache."""
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached:
            self.cached += cached
            self.by_tier["server"] = self.by_tier.get("server", 0) + cached

    def add_append(self, r: AppendResult) -> None:
        self.prompt += r.new_tokens
        self.cached += r.cached_tokens
        self.computed += r.computed_tokens
        for tier, n in r.cached_by_tier.items():
            self.by_tier[tier] = self.by_tier.get(tier, 0) + n


class AgentLoop:
    """Runs user turns on one conversation. Emits events; never touches a UI."""

    def __init__(self, conv: Conversation, tools: list[Tool], ctx: ToolContext, permissions,
                 emit: Callable[[Event], None],
                 approve: Callable[[ApprovalRequested], ApprovalDecision],
                 recorder: Recorder | None = None, config: LoopConfig = LoopConfig(),
                 context_window: int = 0, default_tool_choice: str = "auto"):
        self.conv = conv
        self.tools = {t.name: t for t in tools}
        self.ctx = ctx
        self.permissions = permissions
        self.emit = emit
        self.approve = approve
        self.recorder = recorder or NullRecorder()
        self.config = config
        self.context_window = context_window
        self.default_tool_choice = default_tool_choice
        self._call_ids = 0
        self._last_calls: str | None = None
        self._repeating = False

    @property
    def cancel(self) -> threading.Event:
        return self.ctx.cancel

    def run_turn(self, turn: int, user_text: str, preamble: list[dict] | None = None
                 ) -> TurnFinished:
        """One user message, answered through as many model steps as it takes (or the limit)."""
        self.cancel.clear()
        self._last_calls, self._repeating = None, False
        self.emit(TurnStarted(turn, user_text))
        tally = _TurnTally()
        if self.conv.carried:
            tally.add_append(self.conv.carried)
            self.conv.carried = None
        messages = (preamble or []) + [{"role": "user", "content": user_text}]
        status, text = "turn_limit", ""
        for step in range(self.config.max_steps):
            if self.cancel.is_set():
                status = "interrupted"
                break
            messages, text = self._step(turn, messages, tally, self._tool_choice(step))
            if self.cancel.is_set():
                status = "interrupted"
                break
            if not messages:
                status = "done"
                break
        usage = Usage(tally.prompt, tally.completion, tally.cached, dict(tally.by_tier),
                      tally.computed, self.conv.context_tokens, self.context_window,
                      round(tally.decode_tok_s, 2))
        self.recorder.event(turn, "usage", {"status": status, **usage.__dict__})
        finished = TurnFinished(turn, status, text, usage)
        self.emit(finished)
        return finished

    def _prefill_progress(self, done: int, total: int) -> None:
        if total >= PROGRESS_MIN_TOKENS:  # short appends would only flicker
            self.emit(Progress("prefill", done, total))

    def _tool_choice(self, step: int) -> str:
        if step and self._repeating:
            return "none"  # the same calls twice in a row: answer with what is known
        choice = self.config.tool_choice or self.default_tool_choice
        if choice == "first":
            return "required" if step == 0 else "none"
        return choice

    def _step(self, turn: int, messages: list[dict], tally: _TurnTally, tool_choice: str
              ) -> tuple[list[dict], str]:
        """Append messages, generate a reply, run its tool calls; return the tool messages."""
        appended = self.conv.append(messages, progress=self._prefill_progress)
        tally.add_append(appended)
        for m in messages:
            self.recorder.event(turn, "message", m)
        self.recorder.tokens(turn, messages[-1]["role"], appended.ids, appended.text)
        visible = _VisibleText()
        gen = dataclasses.replace(self.config.gen, tool_choice=tool_choice)
        for delta in self.conv.generate(gen, self.cancel):
            shown = visible.push(delta)
            if shown:
                self.emit(TokenDelta(shown))
        tail = visible.flush()
        if tail:
            self.emit(TokenDelta(tail))
        reply = self.conv.last_reply
        assert reply is not None, "generate must leave last_reply"
        tally.completion += len(reply.ids) or max(1, len(reply.text) // 4)
        tally.add_server_usage(reply.usage)
        tally.decode_tok_s = reply.decode_tok_s or tally.decode_tok_s
        self.recorder.event(turn, "message", {"role": "assistant", "content": reply.text})
        self.recorder.tokens(turn, "assistant", reply.ids, reply.text)
        if reply.finish_reason == "interrupted":
            return [], reply.text
        parsed = parse_tool_calls(reply.text, first_id=self._call_ids + 1)
        self._call_ids += len(parsed.calls)
        self._repeating = bool(parsed.calls) and _signature(parsed.calls) == self._last_calls
        self._last_calls = _signature(parsed.calls)
        return [self._dispatch(turn, call) for call in parsed.calls], parsed.text

    def _dispatch(self, turn: int, call: ToolCall) -> dict[str, Any]:
        """Run one call (or refuse it) and return the tool message for the model."""
        self.emit(ToolCallStarted(call.call_id, call.name, call.arguments))
        self.recorder.event(turn, "tool_call", {"id": call.call_id, "name": call.name,
                                                "arguments": call.arguments})
        result = self._result_for(turn, call)
        self.recorder.event(turn, "tool_result", {"id": call.call_id, "name": call.name,
                                                  "ok": result.ok, "content": result.content,
                                                  "full_output": result.full_output,
                                                  "metadata": _jsonable(result.metadata)})
        self.emit(ToolCallFinished(call.call_id, call.name, result.ok, result.content,
                                   _jsonable(result.metadata)))
        return {"role": "tool", "name": call.name or "error", "content": result.content}

    def _result_for(self, turn: int, call: ToolCall) -> ToolResult:
        if call.error:
            return ToolResult.fail(call.error)
        tool = self.tools.get(call.name)
        if tool is None:
            names = ", ".join(sorted(self.tools))
            return ToolResult.fail(f"unknown tool {call.name!r}; available: {names}")
        refusal = self._permission(turn, tool, call)
        if refusal:
            return ToolResult.fail(refusal)
        return run_tool(tool, call.arguments, self.ctx)

    def _permission(self, turn: int, tool: Tool, call: ToolCall) -> str | None:
        """None if the call may run; otherwise the refusal the model sees."""
        decision = self.permissions.check(tool.name, call.arguments)
        if decision.action == "ask":
            answer = self.approve(ApprovalRequested(call.call_id, call.name, call.arguments,
                                                    decision.suggested_rule))
            self.recorder.event(turn, "permission", {"id": call.call_id,
                                                     "decision": answer.decision,
                                                     "rule": answer.rule})
            if answer.decision == "always" and answer.rule:
                self.permissions.add_rule(answer.rule)
            if answer.decision == "deny":
                return f"the user denied this {call.name} call; do something else or ask them"
            return None
        if decision.action == "deny":
            return f"permission denied: {decision.reason}"
        return None


class _VisibleText:
    """Streams assistant text but hides tool-call markup (it is shown as tool widgets)."""

    MARK = "<tool_call>"

    def __init__(self) -> None:
        self.buf = ""
        self.hidden = False

    def push(self, delta: str) -> str:
        if self.hidden:
            return ""
        self.buf += delta
        at = self.buf.find(self.MARK)
        if at >= 0:
            self.hidden = True
            out, self.buf = self.buf[:at], ""
            return out
        keep = next((k for k in range(len(self.MARK) - 1, 0, -1)
                     if self.buf.endswith(self.MARK[:k])), 0)
        out = self.buf[: len(self.buf) - keep]
        self.buf = self.buf[len(self.buf) - keep :]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hidden else self.buf), ""
        return out


def _signature(calls: list[ToolCall]) -> str:
    return json.dumps([(c.name, c.arguments) for c in calls], sort_keys=True, default=str)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
