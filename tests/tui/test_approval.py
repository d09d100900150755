"""The approval modal: each answer sends the matching ApprovalDecision, once."""

from __future__ import annotations

import pytest

from agent.events import ApprovalDecision, Interrupt
from tui.screens.approval import ApprovalScreen
from tui.widgets.tool_call import ToolCallView

pytestmark = pytest.mark.asyncio


async def ask(app, pilot, wait_for) -> ApprovalScreen:
    app.main.prompt.load_text("what changed?")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen))
    assert app.main.query_one(ToolCallView).has_class("-awaiting")
    assert "waiting for approval" in str(app.main.status.render())
    return app.screen


async def answered(app, pilot, wait_for) -> ApprovalDecision:
    await wait_for(pilot, lambda: not app.main.turns.busy)
    decisions = app.handle.ops_of(ApprovalDecision)
    assert len(decisions) == 1
    return decisions[0]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["y"], ApprovalDecision("call-1-shell", "allow")),
        (["enter"], ApprovalDecision("call-1-shell", "allow")),  # the focused default
        (["a"], ApprovalDecision("call-1-shell", "always", "shell(git *)")),
        (["n"], ApprovalDecision("call-1-shell", "deny")),
        (["escape"], ApprovalDecision("call-1-shell", "deny")),
    ],
)
async def test_each_key_sends_its_decision(
    make_app, make_handle, scripts, wait_for, keys, expected
):
    app = make_app(make_handle(script=scripts["approval"]))
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await ask(app, pilot, wait_for)
        assert screen.request.suggested_rule == "shell(git *)"
        await pilot.press(*keys)
        assert await answered(app, pilot, wait_for) == expected


@pytest.mark.parametrize("button", ["#allow", "#always", "#deny"])
async def test_buttons(make_app, make_handle, scripts, wait_for, button):
    app = make_app(make_handle(script=scripts["approval"]))
    async with app.run_test(size=(100, 40)) as pilot:
        await ask(app, pilot, wait_for)
        await pilot.click(button)
        decision = await answered(app, pilot, wait_for)
        assert decision.decision == button[1:]


async def test_always_with_an_edited_rule(make_app, make_handle, scripts, wait_for):
    app = make_app(make_handle(script=scripts["approval"]))
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await ask(app, pilot, wait_for)
        rule = screen.query_one("#rule")
        rule.focus()
        rule.value = "shell(git status*)"
        await pilot.press("enter")  # enter in the rule field means "always"
        decision = await answered(app, pilot, wait_for)
        assert decision == ApprovalDecision("call-1-shell", "always", "shell(git status*)")
        tool = app.main.query_one(ToolCallView)
        assert tool.has_class("-ok")


async def test_denied_call_is_marked(make_app, make_handle, scripts, wait_for, canned):
    handle = make_handle(script=lambda n, p: scripts["approval"](n, p)[:4] + [canned["HOLD"]])
    app = make_app(handle)
    async with app.run_test(size=(100, 40)) as pilot:
        await ask(app, pilot, wait_for)
        await pilot.press("n")
        await wait_for(pilot, lambda: app.main.query_one(ToolCallView).has_class("-denied"))


async def test_request_withdrawn_when_the_turn_ends(make_app, make_handle, scripts, wait_for):
    app = make_app(make_handle(script=scripts["approval"]))
    async with app.run_test(size=(100, 40)) as pilot:
        await ask(app, pilot, wait_for)
        app.handle.submit(Interrupt())  # the agent ends the turn on its own
        await wait_for(pilot, lambda: not isinstance(app.screen, ApprovalScreen))
        assert app.handle.ops_of(ApprovalDecision) == []  # nothing sent for a dead request
