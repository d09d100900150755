"""AgentApp through a pilot: prompts, streaming, tool calls, queueing, commands, quitting."""

from __future__ import annotations

import pytest

from agent.events import Interrupt, Note, Progress, Shutdown, UserInput
from tui.widgets.assistant_message import AssistantMessage
from tui.widgets.diff_view import DiffView
from tui.widgets.notice import Notice
from tui.widgets.progress_row import ProgressRow
from tui.widgets.tool_call import ToolCallView
from tui.widgets.user_message import UserMessage

pytestmark = pytest.mark.asyncio

SIZE = (100, 40)


def notices(app) -> list[str]:
    return [str(n.render()) for n in app.main.query(Notice)]


async def send(pilot, text: str) -> None:
    """Put `text` in the prompt and press enter (typing key by key costs ~60 ms a key)."""
    pilot.app.main.prompt.load_text(text)
    await pilot.press("enter")


async def test_typing_and_enter_submits_user_input(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"fix add")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.handle.ops)
        assert app.handle.ops == [UserInput("fix add")]
        assert app.main.prompt.text == ""
        await wait_for(pilot, lambda: app.main.query(UserMessage))
        first = app.main.transcript.query(UserMessage).first()
        assert first.text == "fix add" and first.turn == 1


async def test_streamed_text_appears_as_markdown(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "fix add")
        await wait_for(pilot, lambda: not app.main.turns.busy)
        messages = list(app.main.query(AssistantMessage))
        assert [m.source for m in messages] == [
            "I'll fix the sign in `add`.\n",
            "Fixed: `add` now **adds**.",
        ]
        assert not any(m.has_class("-streaming") for m in messages)


async def test_text_streams_before_the_turn_ends(make_app, make_handle, scripts, wait_for):
    handle = make_handle(script=scripts["held"])
    app = make_app(handle)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "long task")
        await wait_for(pilot, lambda: app.main.query(AssistantMessage))
        message = app.main.query_one(AssistantMessage)
        await wait_for(pilot, lambda: "Working on turn 1" in message.source)
        assert message.has_class("-streaming") and app.main.turns.busy
        handle.release()
        await wait_for(pilot, lambda: not app.main.turns.busy)
        assert not message.has_class("-streaming")


async def test_tool_call_shows_diff_and_output_expands_and_collapses(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "fix add")
        await wait_for(pilot, lambda: not app.main.turns.busy)
        tool = app.main.query_one(ToolCallView)
        assert tool.has_class("-ok") and tool.tool_name == "edit"
        assert "calc.py" in str(tool.query_one(".tool-header").render())
        diff = tool.query_one(DiffView)
        assert "return a + b" in str(diff.render()) and not diff.has_class("-split")
        assert tool.expanded is False
        await pilot.click("ToolCallView CollapsibleTitle")
        assert tool.expanded is True
        await pilot.press("ctrl+o")  # toggles every tool output
        assert tool.expanded is False
        await pilot.press("ctrl+o")
        assert tool.expanded is True


async def test_diff_layout_follows_width_and_ctrl_t(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        await send(pilot, "fix add")
        await wait_for(pilot, lambda: app.main.query(DiffView))
        diff = app.main.query_one(DiffView)
        await pilot.pause()
        assert diff.has_class("-split")  # auto, on a wide terminal
        await pilot.press("ctrl+t")
        assert diff.mode == "unified" and not diff.has_class("-split")
        await pilot.press("ctrl+t")
        assert diff.mode == "split" and diff.has_class("-split")
        assert "│" in str(diff.render())


async def test_input_while_busy_is_queued_then_runs(make_app, make_handle, scripts, wait_for):
    handle = make_handle(script=scripts["held"])
    app = make_app(handle)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "first")
        await wait_for(pilot, lambda: app.main.turns.running)
        await send(pilot, "second")
        await wait_for(pilot, lambda: app.main.query("#queue UserMessage"))
        queued = app.main.query_one("#queue UserMessage", UserMessage)
        assert queued.text == "second" and queued.has_class("-queued")
        assert handle.ops == [UserInput("first"), UserInput("second")]
        handle.release()  # turn 1 ends; the agent starts turn 2 on the queued prompt
        await wait_for(pilot, lambda: not app.main.query("#queue UserMessage"))
        in_transcript = [m.text for m in app.main.transcript.query(UserMessage)]
        assert in_transcript == ["first", "second"]
        assert app.main.transcript.turn_start(2).text == "second"


async def test_escape_sends_interrupt(make_app, make_handle, scripts, wait_for):
    handle = make_handle(script=scripts["held"])
    app = make_app(handle)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape")
        assert handle.ops_of(Interrupt) == []  # idle: nothing to interrupt
        await send(pilot, "long task")
        await wait_for(pilot, lambda: app.main.turns.running)
        await pilot.press("escape")
        assert handle.ops[-1] == Interrupt()
        await wait_for(pilot, lambda: not app.main.turns.busy)
        assert any("interrupted" in text for text in notices(app))


async def test_history_up_and_down(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "one")
        await wait_for(pilot, lambda: not app.main.turns.busy)
        await send(pilot, "two")
        await wait_for(pilot, lambda: not app.main.turns.busy)
        prompt = app.main.prompt
        await pilot.press(*"draft")
        await pilot.press("up")
        assert prompt.text == "two"
        await pilot.press("up")
        assert prompt.text == "one"
        await pilot.press("up")
        assert prompt.text == "one"  # the oldest stays
        await pilot.press("down", "down")
        assert prompt.text == "draft"


async def test_multiline_prompt(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a", "shift+enter", "b", "ctrl+j", "c")
        assert app.main.prompt.text == "a\nb\nc"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.handle.ops)
        assert app.handle.ops[0] == UserInput("a\nb\nc")


async def test_status_bar_numbers(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "fix add")
        await wait_for(pilot, lambda: app.main.status.kv is not None and app.main.status.usage)
        text = str(app.main.status.render())
        for expected in [
            "SmolLM2-135M-Instruct",
            "ctx 5.2K/8.2K 63%",
            "cached 2.1K",
            "device 1.8K",
            "host 300",
            "computed 348",
            "41.5 tok/s",
            "KV device 5.1K",
            "host 1.0K",
            "disk 7.7K",
        ]:
            assert expected in text, expected


async def test_progress_bar_shows_rate_and_eta_then_goes(make_app, clock, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.handle.emit(Progress("restore", 0, 10_000))
        await wait_for(pilot, lambda: app.main.query(ProgressRow))
        clock.now += 2.0
        app.handle.emit(Progress("restore", 4_000, 10_000))
        await wait_for(pilot, lambda: "ETA" in str(app.main.query_one(".progress-detail").render()))
        detail = str(app.main.query_one(".progress-detail").render())
        assert detail == "4.0K/10.0K tokens · 2.0K tokens/s · ETA 0:03"
        app.handle.emit(Progress("restore", 10_000, 10_000))
        await wait_for(pilot, lambda: not app.main.query(ProgressRow))


async def test_note_and_unknown_command(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.handle.emit(Note("calc.py changed outside the agent"))
        await wait_for(pilot, lambda: app.main.query(Notice))
        await send(pilot, "/frobnicate")
        await wait_for(pilot, lambda: len(notices(app)) == 2)
        assert "Unknown command /frobnicate" in notices(app)[1]
        assert app.handle.ops == []  # commands never reach the agent


async def test_model_command(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/model")
        await wait_for(pilot, lambda: notices(app))
        card = notices(app)[0]
        assert "SmolLM2-135M-Instruct" in card and "8.2K tokens" in card and "/repo/calc" in card


async def test_context_command_with_breakdown(make_app, wait_for):
    breakdown = {"system": 1200, "repository": 3000, "conversation": 1000}
    app = make_app(context_breakdown=lambda: breakdown)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/context")
        await wait_for(pilot, lambda: notices(app))
        card = notices(app)[0]
        assert "repository" in card and "3.0K" in card and "37%" in card
        assert "total" in card and "5.2K" in card


async def test_context_command_without_breakdown(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/context")
        await wait_for(pilot, lambda: notices(app))
        assert "not available" in notices(app)[0]


async def test_help_screen_from_command_key_and_question_mark(make_app, wait_for):
    from tui.screens.help import HelpScreen

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        for opener in (["/", "h", "e", "l", "p", "enter"], ["f1"], ["question_mark", "enter"]):
            await pilot.press(*opener)
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            text = " ".join(str(s.render()) for s in app.screen.query("Static"))
            assert "ctrl+q" in text and "/rewind" in text and "esc" in text
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_rewind_calls_back_and_truncates(make_app, wait_for):
    from tui.screens.rewind import RewindScreen

    rewound: list[int] = []
    app = make_app(rewind=rewound.append)
    async with app.run_test(size=SIZE) as pilot:
        for text in ("one", "two", "three"):
            await send(pilot, text)
            await wait_for(pilot, lambda: not app.main.turns.busy)
        await send(pilot, "/rewind")
        await wait_for(pilot, lambda: isinstance(app.screen, RewindScreen))
        await pilot.press("down", "enter")  # newest first: turn 3, then turn 2
        await wait_for(pilot, lambda: rewound)
        await wait_for(pilot, lambda: list(app.main.turn_prompts) == [1])
        assert rewound == [2]
        assert [m.text for m in app.main.transcript.query(UserMessage)] == ["one"]
        assert app.main.prompt.text == "two"  # back in the prompt, to edit and resend


async def test_rewind_unavailable_without_callable(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/rewind")
        await wait_for(pilot, lambda: notices(app))
        assert "not available" in notices(app)[0]


async def test_quit_sends_shutdown_and_waits_for_close(make_app, make_handle, wait_for):
    handle = make_handle(close_delay_s=0.2)
    app = make_app(handle)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
        assert handle.ops == [Interrupt(), Shutdown()]  # a running turn stops first
        assert app.is_running  # still waiting for the agent to flush
        await wait_for(pilot, lambda: not app.is_running)
        assert handle.closed
    assert handle.ops == [Interrupt(), Shutdown()]  # once, even though unmount checks again


async def test_quit_command(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/quit")
        await wait_for(pilot, lambda: not app.is_running)
    assert app.handle.ops == [Interrupt(), Shutdown()]


async def test_agent_closing_by_itself_is_shown(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.handle.submit(Shutdown())  # as if the agent had stopped on its own
        await wait_for(pilot, lambda: app.main.closed)
        assert app.main.status.has_class("-closed")
        await send(pilot, "hello")
        await wait_for(pilot, lambda: len(notices(app)) == 2)
        assert "stopped" in notices(app)[1]


async def test_leaving_without_quit_still_sends_shutdown(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.exit()
    assert app.handle.ops == [Interrupt(), Shutdown()]


async def test_fatal_error_stops_the_session(make_app, wait_for):
    from agent.events import Error

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.handle.emit(Error("model file is missing: run `agent models pull`", fatal=True))
        await wait_for(pilot, lambda: app.main.closed)
        assert "agent models pull" in notices(app)[0]
        assert "stopped" in str(app.main.status.render())


async def test_old_items_are_trimmed_from_the_transcript(make_app, wait_for):
    from tui.widgets import transcript

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.handle.emit(*(Note(f"note {i}") for i in range(transcript.MAX_ITEMS + 5)))
        await wait_for(pilot, lambda: "note 404" in (notices(app) or [""])[-1])
        shown = app.main.transcript.items
        assert len(shown) == transcript.MAX_ITEMS + 5 - transcript.TRIM_ITEMS
        earlier = str(app.main.query_one("#earlier").render())
        assert f"{transcript.TRIM_ITEMS} earlier items" in earlier


async def test_a_broken_handle_does_not_crash_the_app(make_app, make_handle, wait_for):
    handle = make_handle()

    def broken(timeout=None):
        raise RuntimeError("event queue torn down")

    handle.next_event = broken
    app = make_app(handle)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.main.closed)
        assert "event queue torn down" in " ".join(notices(app))
