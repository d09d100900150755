"""One sub-agent: a conversation forked from its parent's (or resumed), its own turn loop, its
own session in the store, and its events nested under the parent's task call.

It shares the parent's permissions (the same object: nothing it may do is wider), workspace
and interrupt (`cancel`: Ctrl-C stops it too); it knows the files the parent had seen when it
was forked (a copy of the tracker) and calls only its subset of the parent's tools. Its call
ids carry the parent's call id as a prefix (`call_2.call_1`), so they stay apart from the
parent's and its siblings' in the stream and in approvals.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.backends.base import Conversation
from agent.events import (
    RECORD_ONLY,
    RECORDED,
    ApprovalDecision,
    ApprovalRequested,
    Error,
    Event,
    Nested,
    SubagentStarted,
    TurnFinished,
    Usage,
    event_name,
    event_to_json,
)
from agent.loop import AgentLoop, LoopConfig, StoreRecorder
from agent.tools.base import Tool, ToolContext, ToolResult

log = logging.getLogger(__name__)

FRAMING = ("You are now a sub-agent, started by the task call above: {description}. You see "
           "everything this conversation has seen so far. Do the work in the next message on "
           "your own, with your tools ({tools}), and end with a final answer that stands on "
           "its own: it is all that goes back to the caller.")
CONTINUE = "Go on with your task where you stopped, and end with your final answer."


@dataclass(frozen=True)
class TaskSpec:
    """What a task call asks of its sub-agent (resolved: tools named, a step limit set)."""

    call_id: str
    description: str
    prompt: str
    tools: tuple[str, ...]
    max_steps: int

    def started(self, agent_id: str, shared: int, fork_ms: float = 0.0,
                resumed: bool = False) -> SubagentStarted:
        return SubagentStarted(self.call_id, agent_id, self.description, self.prompt,
                               list(self.tools), self.max_steps, shared, round(fork_ms, 3),
                               resumed)


@dataclass
class Parent:
    """What sub-agents take from the session that starts them."""

    session_id: str
    turn: int
    store: Any
    tools: list[Tool]  # the session's, task left out
    ctx: ToolContext
    permissions: Any
    config: LoopConfig
    context_window: int
    default_tool_choice: str
    put: Callable[[Event | Nested], None]  # onto the parent's event stream, not recorded
    approve: Callable[[ApprovalRequested, Nested], ApprovalDecision]


class Subagent:
    """Runs one sub-agent's turn: `run()` returns its TurnFinished (never raises)."""

    def __init__(self, parent: Parent, spec: TaskSpec, agent_id: str, conv: Conversation,
                 turn: int, started: SubagentStarted, text: str,
                 preamble: list[dict] | None = None):
        self.parent, self.spec, self.agent_id, self.conv = parent, spec, agent_id, conv
        self.turn, self.started, self.text, self.preamble = turn, started, text, preamble
        ctx = ToolContext(parent.ctx.workspace, parent.ctx.files.copy(), parent.ctx.cancel,
                          parent.ctx.read_policy)
        tools = [t for t in parent.tools if t.name in spec.tools]
        config = dataclasses.replace(parent.config, max_steps=spec.max_steps)
        self.loop = AgentLoop(conv, tools, ctx, parent.permissions, self._emit, self._approve,
                              StoreRecorder(parent.store, agent_id), config,
                              parent.context_window, parent.default_tool_choice)
        self.loop.call_prefix = f"{spec.call_id}."

    @classmethod
    def first_message(cls, spec: TaskSpec) -> list[dict]:
        """The message before the prompt that tells the fork it is now the sub-agent."""
        tools = ", ".join(spec.tools) or "none"
        return [{"role": "user", "content": FRAMING.format(description=spec.description,
                                                            tools=tools)}]

    def run(self) -> TurnFinished:
        try:
            return self.loop.run_turn(self.turn, self.text, self.preamble)
        except Exception as e:  # the sub-agent's failure is the task's result, not the parent's
            log.warning("sub-agent %s failed", self.agent_id, exc_info=True)
            message = f"{type(e).__name__}: {e}"
            self._emit(Error(message))
            return TurnFinished(self.turn, "error", message, Usage())

    def _emit(self, event: Event) -> None:
        if isinstance(event, RECORDED):
            payload = event_to_json(event)
            del payload["type"]
            self.parent.store.append_event(self.agent_id, self.turn, event_name(type(event)),
                                           payload)
        if not isinstance(event, RECORD_ONLY):
            self.parent.put(self.nested(event))

    def nested(self, event: Event) -> Nested:
        return Nested(self.spec.call_id, self.agent_id, event)

    def _approve(self, request: ApprovalRequested) -> ApprovalDecision:
        return self.parent.approve(request, self.nested(request))


def task_result(spec: TaskSpec, agent_id: str, finished: TurnFinished, shared: int
                ) -> ToolResult:
    """What the parent's task call returns: the sub-agent's answer, or why it stopped and
    how to go on."""
    u = finished.usage
    metadata = {"agent_id": agent_id, "status": finished.status, "steps": finished.steps,
                "shared_tokens": shared, "computed_tokens": u.computed_tokens,
                "cached_input_tokens": u.cached_input_tokens, "output_tokens": u.output_tokens}
    text = finished.text.strip()
    if finished.status == "done":
        return ToolResult(True, text or "(the sub-agent ended without an answer)",
                          metadata=metadata)
    why = {"interrupted": "it was interrupted",
           "turn_limit": f"it used its {spec.max_steps} steps"}.get(finished.status)
    if why is None:  # context_full, error: the text says what went wrong
        return ToolResult(False, f"the sub-agent {agent_id} failed: {text}", metadata=metadata)
    so_far = f" What it had so far:\n{text}" if text else ""
    return ToolResult(False, f"the sub-agent {agent_id} stopped before its answer ({why}, "
                      f"after {finished.steps} steps); go on with it with "
                      f'task(resume="{agent_id}").{so_far}', metadata=metadata)
