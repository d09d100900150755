"""The agent loop: render -> extend -> generate -> parse -> dispatch tools -> record."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.backends.base import AppendCancelled, AppendResult, ContextFull, Conversation, GenParams
from agent.events import (
    ApprovalDecision,
    ApprovalGiven,
    ApprovalRequested,
    AssistantMessage,
    Event,
    MessageAdded,
    Note,
    Progress,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    Usage,
)
from agent.tool_calls import ToolCall, parse_tool_calls
from agent.tool_policy import Choice, ToolPolicy
from agent.tools.base import Tool, ToolContext, ToolResult, run_tool, run_tool_calls

PROGRESS_MIN_TOKENS = 2048


class Recorder(Protocol):
    """Where the loop writes the token log (the session store, or nothing in tests)."""

    def tokens(self, turn: int, kind: str, ids: list[int], text: str) -> None: ...


class NullRecorder:
    """Keeps no token log (a session without a store, loop tests)."""

    def tokens(self, turn: int, kind: str, ids: list[int], text: str) -> None:
        return None


class StoreRecorder(Recorder):
    """Writes the loop's token segments into the session store."""

    def __init__(self, store, session_id: str):
        self.store = store
        self.session_id = session_id

    def tokens(self, turn: int, kind: str, ids: list[int], text: str) -> None:
        self.store.append_tokens(self.session_id, turn, kind, ids, text)


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int = 12  # model calls per user message; hitting it ends the turn as turn_limit
    gen: GenParams = GenParams()
    # "auto" | "required" | "none" | "first" (the first reply of a turn calls a tool, the next
    # answers in words) | "chain" (explore, edit, answer under a narrowed grammar: for models
    # not trained to use tools; see agent/tool_policy.py); None: the backend's default.
    tool_choice: str | None = None


@dataclass
class _TurnTally:
    prompt: int = 0
    cached: int = 0
    computed: int = 0
    completion: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    decode_tok_s: float = 0.0
    steps: int = 0
    _estimate: int = 0  # input tokens counted since the last reply, before a server's count
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def usage(self, context_tokens: int, window: int) -> Usage:
        return Usage(self.prompt, self.completion, self.cached, dict(self.by_tier),
                     self.computed, context_tokens, window, round(self.decode_tok_s, 2))

    def elapsed_ms(self, since: float | None = None) -> int:
        return round(((since or time.perf_counter()) - self.started) * 1000)

    def add_server_usage(self, usage: dict[str, Any]) -> None:
        """A remote server's own count of the prompt it was sent (it replaces our estimate of
        what was appended since the last reply) and of what its prefix cache served."""
        prompt = usage.get("prompt_tokens") or 0
        cached = min((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                     prompt)
        if prompt:
            self.prompt += prompt - self._estimate
            self.computed += prompt - cached
        self._estimate = 0
        if cached:
            self.cached += cached
            self.by_tier["server"] = self.by_tier.get("server", 0) + cached

    def add_append(self, r: AppendResult) -> None:
        self.prompt += r.new_tokens
        self._estimate += r.new_tokens
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
        self.policy = ToolPolicy(config.tool_choice or default_tool_choice,
                                 [t.schema() for t in tools], ctx.workspace.root)
        self._call_ids = 0
        self.call_prefix = ""
        self._last_calls: str | None = None
        self._repeating = False

    @property
    def cancel(self) -> threading.Event:
        return self.ctx.cancel

    def run_turn(self, turn: int, user_text: str, preamble: list[dict] | None = None
                 ) -> TurnFinished:
        """One user message, answered through as many model steps as it takes (or the limit).

        A cancel set before the turn starts stops it at once (the caller clears stale ones)."""
        self._last_calls, self._repeating = None, False
        self.policy.start_turn(user_text)
        self.emit(TurnStarted(turn, user_text))
        tally = _TurnTally()
        if self.conv.carried:
            tally.add_append(self.conv.carried)
            self.conv.carried = None
        messages = (preamble or []) + [{"role": "user", "content": user_text}]
        status, text = self._steps(turn, messages, tally)
        usage = tally.usage(self.conv.context_tokens, self.context_window)
        first = None if tally.first_token is None else tally.elapsed_ms(tally.first_token)
        finished = TurnFinished(turn, status, text, usage, tally.steps, tally.elapsed_ms(),
                                first)
        self.emit(finished)
        return finished

    @property
    def reply_room(self) -> int:
        """Tokens kept free for a reply: the configured reply length, at most half the window."""
        return min(self.config.gen.max_tokens, self.context_window // 2)

    def _steps(self, turn: int, messages: list[dict], tally: _TurnTally) -> tuple[str, str]:
        """Model steps until an answer without tool calls; (status, final text)."""
        text = ""
        for step in range(self.config.max_steps):
            if self.cancel.is_set():
                return "interrupted", text
            try:
                messages, text = self._step(turn, step + 1, messages, tally,
                                            self._tool_choice(step))
            except ContextFull as e:
                return "context_full", context_full_advice(e)
            except AppendCancelled:
                return "interrupted", text
            if not messages:
                return ("interrupted" if self.cancel.is_set() else "done"), text
            if self.cancel.is_set():
                self._keep(turn, messages, tally)
                return "interrupted", text
        self._keep(turn, messages, tally)
        return "turn_limit", text

    def _keep(self, turn: int, messages: list[dict], tally: _TurnTally) -> None:
        """Tool results of a turn that stops here go into the context without a reply."""
        try:
            self._append(turn, messages, tally, generation_prompt=False)
        except (ContextFull, AppendCancelled) as e:  # they stay in the session's record
            self.emit(Note(f"tool results not added to the context: {e}"))

    def _append(self, turn: int, messages: list[dict], tally: _TurnTally,
                generation_prompt: bool = True) -> None:
        """Append messages within the window (leaving the reply room when a reply follows);
        tool results too long to fit are replaced by a line saying so."""
        limit = self.context_window - (self.reply_room if generation_prompt else 0)
        limit = limit if self.context_window else None
        cancel = None if not generation_prompt else self.cancel
        try:
            appended = self.conv.append(messages, generation_prompt, self._prefill_progress,
                                        limit, cancel)
        except ContextFull as e:
            if not any(m["role"] == "tool" for m in messages):
                raise
            messages = [_too_long(m, e) for m in messages]
            appended = self.conv.append(messages, generation_prompt, self._prefill_progress,
                                        limit, cancel)
        tally.add_append(appended)
        for m in messages:
            self.emit(MessageAdded(turn, m["role"], m["content"], m.get("name", "")))
        self.recorder.tokens(turn, messages[-1]["role"], appended.ids, appended.text)

    def _prefill_progress(self, done: int, total: int) -> None:
        if total >= PROGRESS_MIN_TOKENS:  # short appends would only flicker
            self.emit(Progress("prefill", done, total))

    def _tool_choice(self, step: int) -> Choice:
        return self.policy.choose(step, self._repeating)

    def _step(self, turn: int, step: int, messages: list[dict], tally: _TurnTally,
              choice: Choice) -> tuple[list[dict], str]:
        """Append messages, generate a reply, run its tool calls; return the tool messages."""
        self._append(turn, messages, tally)
        visible = _VisibleText()
        gen = dataclasses.replace(self.config.gen, tool_choice=choice.tool_choice,
                                  tools=choice.schemas)
        tally.steps += 1
        for delta in self.conv.generate(gen, self.cancel):
            if tally.first_token is None:
                tally.first_token = time.perf_counter()
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
        self.emit(MessageAdded(turn, "assistant", reply.text))
        self.recorder.tokens(turn, "assistant", reply.ids, reply.text)
        if reply.finish_reason == "interrupted":
            text = parse_tool_calls(reply.text).text
            self.emit(AssistantMessage(turn, step, text, [], reply.finish_reason))
            return [], text
        parsed = parse_tool_calls(reply.text, first_id=self._call_ids + 1)
        self._call_ids += len(parsed.calls)
        if self.call_prefix:  # a sub-agent's ids stay apart from its parent's and siblings'
            parsed = dataclasses.replace(parsed, calls=[
                dataclasses.replace(c, call_id=self.call_prefix + c.call_id)
                for c in parsed.calls])
        self.emit(AssistantMessage(turn, step, parsed.text, [_call_json(c) for c in parsed.calls],
                                   reply.finish_reason))
        self._repeating = bool(parsed.calls) and _signature(parsed.calls) == self._last_calls
        self._last_calls = _signature(parsed.calls)
        return self._dispatch_all(parsed.calls), parsed.text

    def _dispatch_all(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """The reply's calls in order; a run of calls of a tool that `batches` (task) runs
        together. Returns the tool messages, one per call, in the calls' order."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(calls):
            tool = self.tools.get(calls[i].name)
            j = i + 1
            while (tool is not None and tool.batches and j < len(calls)
                   and calls[j].name == tool.name):
                j += 1
            if tool is not None and tool.batches:
                out += self._dispatch_together(tool, calls[i:j])
            else:
                out.append(self._dispatch(calls[i]))
            i = j
        return out

    def _dispatch(self, call: ToolCall) -> dict[str, Any]:
        """Run one call (or refuse it) and return the tool message for the model."""
        self.emit(ToolCallStarted(call.call_id, call.name, _jsonable(call.arguments)))
        return self._finished(call, self._result_for(call))

    def _dispatch_together(self, tool: Tool, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """Calls of one batching tool: each started and checked, the allowed ones run in one
        `run_calls`, each finished in order."""
        for call in calls:
            self.emit(ToolCallStarted(call.call_id, call.name, _jsonable(call.arguments)))
        results: dict[int, ToolResult] = {}
        allowed = []
        for k, call in enumerate(calls):
            refusal = call.error or self._permission(tool, call)
            if refusal:
                results[k] = ToolResult.fail(refusal)
            else:
                allowed.append(k)
        ran = run_tool_calls(tool, [(calls[k].call_id, calls[k].arguments) for k in allowed],
                             self.ctx)
        results.update(zip(allowed, ran, strict=True))
        return [self._finished(call, results[k]) for k, call in enumerate(calls)]

    def _finished(self, call: ToolCall, result: ToolResult) -> dict[str, Any]:
        self.policy.observe(call, result.ok, result.content)
        metadata = _jsonable(result.metadata)
        if result.full_output:
            metadata = {**metadata, "full_output": result.full_output}
        self.emit(ToolCallFinished(call.call_id, call.name, result.ok, result.content, metadata))
        return {"role": "tool", "name": call.name or "error", "content": result.content}

    def _result_for(self, call: ToolCall) -> ToolResult:
        if call.error:
            return ToolResult.fail(call.error)
        tool = self.tools.get(call.name)
        if tool is None:
            names = ", ".join(sorted(self.tools))
            return ToolResult.fail(f"unknown tool {call.name!r}; available: {names}")
        refusal = self._permission(tool, call)
        if refusal:
            return ToolResult.fail(refusal)
        return run_tool(tool, call.arguments, self.ctx)

    def _permission(self, tool: Tool, call: ToolCall) -> str | None:
        """None if the call may run; otherwise the refusal the model sees."""
        decision = self.permissions.check(tool.name, call.arguments)
        if decision.action == "ask":
            answer = self.approve(ApprovalRequested(call.call_id, call.name, call.arguments,
                                                    decision.suggested_rule))
            self.emit(ApprovalGiven(call.call_id, answer.decision, answer.rule))
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


def context_full_advice(e: ContextFull) -> str:
    """The one line a turn that ran out of window ends with."""
    return (f"the context window is full ({e.context:,} of {e.window:,} tokens held, "
            f"{e.adding:,} more needed, the rest kept for the reply): use a model with a "
            "bigger window or a larger --max-context, or start a new session (without "
            "--continue/--resume), which begins from a fresh snapshot of the repository")


def _too_long(message: dict, e: ContextFull) -> dict:
    if message["role"] != "tool":
        return message
    room = max(e.limit - e.context, 0)
    note = (f"[the output of this call did not fit in the context window ({room:,} tokens "
            "left); narrow it down, e.g. read a line range or grep for what you need]")
    return {**message, "content": note}


def _call_json(call: ToolCall) -> dict[str, Any]:
    out = {"id": call.call_id, "name": call.name, "arguments": _jsonable(call.arguments)}
    return {**out, "error": call.error} if call.error else out


def _signature(calls: list[ToolCall]) -> str:
    return json.dumps([(c.name, c.arguments) for c in calls], sort_keys=True, default=str)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
