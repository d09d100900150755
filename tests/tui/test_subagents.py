"""A sub-agent in the TUI: nested under its task call, collapsible, with its accounting."""

from __future__ import annotations

import pytest

from agent.events import (
    Nested,
    SubagentFinished,
    SubagentStarted,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    Usage,
)
from tui.widgets.subagent import SubagentView
from tui.widgets.tool_call import ToolCallView

pytestmark = pytest.mark.asyncio

SUB = "20261201-160000-ab12"
USED = Usage(input_tokens=120, output_tokens=31, computed_tokens=120, context_tokens=9000)


def task_turn(n: int, prompt: str):
    inside = [ToolCallStarted("call_1.call_1", "read", {"path": "calc.py"}),
              ToolCallFinished("call_1.call_1", "read", True, "def add(a, b): ..."),
              TokenDelta("add adds.")]
    return [
        TurnStarted(n, prompt),
        ToolCallStarted("call_1", "task", {"description": "look at add", "prompt": "read"}),
        SubagentStarted("call_1", SUB, "look at add", "read calc.py", ["read"], 6, 8848, 0.4),
        *(Nested("call_1", SUB, e) for e in inside),
        SubagentFinished("call_1", SUB, "done", "add adds.", 2, 8848, USED, 900, 80),
        ToolCallFinished("call_1", "task", True, "add adds."),
        TokenDelta("It adds."),
        TurnFinished(n, "done", "It adds.", USED),
    ]


async def test_subagent_nested_under_its_task_and_collapsible(make_app, make_handle, wait_for):
    app = make_app(make_handle(task_turn))
    async with app.run_test(size=(100, 50)) as pilot:
        app.main.prompt.load_text("what does add do?")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.main.turns.busy)
        task = next(v for v in app.main.query(ToolCallView) if v.tool_name == "task")
        sub = task.query_one(SubagentView)
        inner = sub.query_one(ToolCallView)  # the sub-agent's call, inside the task's view
        assert inner.tool_name == "read" and inner.has_class("-ok")
        usage = str(sub.query_one(".subagent-usage").render())
        assert "8,848 tokens shared" in usage and "120 computed" in usage
        assert sub.has_class("-done") and not sub.expanded  # collapsed once it answered
        await pilot.click("SubagentView > Collapsible > CollapsibleTitle")
        assert sub.expanded
        assert "add adds." in str(sub.query_one(".subagent-text").render())
