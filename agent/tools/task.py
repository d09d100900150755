"""task: hand a self-contained piece of work to a sub-agent that starts with this context.

The sub-agent is a fork of the conversation at the call (on the local runtime its KV pages
are shared, the partial one copied), with its own turn loop, the session's permissions, a
subset of the tools and a step limit; its final answer is the call's result. Several task
calls in one reply run side by side (agent/subagent_pool.py). The work itself is done by the
session's `SubagentHost` (agent/subagents.py); without one the tool refuses.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import Field, model_validator

from agent.tools.base import Tool, ToolArgs, ToolContext, ToolResult

MAX_STEPS = 50  # the most model calls a sub-agent may be given


class TaskArgs(ToolArgs):
    description: str = Field("", max_length=200,
                             description="A short (3-5 word) name of the work.")
    prompt: str = Field("", description=(
        "The work to do, complete on its own: what to find out or change, and what the "
        "answer must contain."))
    tools: list[str] | None = Field(None, description=(
        "The tools the sub-agent may use (default: all of yours but task)."))
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description=(
        "The most model calls it may make (default: your own limit)."))
    resume: str | None = Field(None, description=(
        "The id of an earlier sub-agent of this session that stopped before its answer: "
        "it goes on where it stopped (description and prompt may then be left out)."))

    @model_validator(mode="after")
    def _work_given(self) -> TaskArgs:
        if not self.resume and not (self.description.strip() and self.prompt.strip()):
            raise ValueError("give description and prompt (or resume, the id of a sub-agent "
                             "to go on with)")
        return self


class Delegator(Protocol):
    """Runs task calls (the session's SubagentHost)."""

    def run(self, calls: list[tuple[str, TaskArgs]]) -> list[ToolResult]:
        """One result per (call id, arguments), in order."""


class TaskTool(Tool):
    """Starts sub-agents through the session's host (`delegator`, bound when the session opens)."""

    name = "task"
    description = (
        "Hand a self-contained piece of work to a sub-agent. It starts with everything this "
        "conversation has seen (the repository, every message and tool result so far), works "
        "with its own tool calls, and its final answer comes back as this call's result. "
        "Several task calls in one reply run at the same time. Use it for side work whose "
        "steps you do not need to see: a search across many files, a review, an experiment."
    )
    Args = TaskArgs
    kind = "read"  # the call itself reads nothing; each of the sub-agent's calls is checked
    main_arg = "description"
    batches = True

    def __init__(self, delegator: Delegator | None = None):
        self.delegator = delegator

    def run(self, args: TaskArgs, ctx: ToolContext) -> ToolResult:
        return self.run_calls([("", args)], ctx)[0]

    def run_calls(self, calls: list[tuple[str, Any]], ctx: ToolContext) -> list[ToolResult]:
        if self.delegator is None:
            return [ToolResult.fail("task needs a session to start sub-agents in")] * len(calls)
        return self.delegator.run(calls)
