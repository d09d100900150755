"""The session picker: resume, fork and delete through the catalog, with summaries shown."""

from __future__ import annotations

import pytest

from agent.events import Shutdown, UserInput
from tui.screens.session_picker import SessionPickerScreen
from tui.widgets.notice import Notice
from tui.widgets.user_message import UserMessage

pytestmark = pytest.mark.asyncio

SIZE = (100, 40)


async def open_picker(app, pilot, wait_for) -> SessionPickerScreen:
    await pilot.press("ctrl+r")
    await wait_for(pilot, lambda: isinstance(app.screen, SessionPickerScreen))
    await wait_for(pilot, lambda: app.screen.sessions)
    return app.screen


def detail(screen: SessionPickerScreen) -> str:
    return str(screen.query_one("#detail").render())


async def test_lists_sessions_with_summary(make_app, catalog, wait_for):
    app = make_app(catalog=catalog)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_picker(app, pilot, wait_for)
        assert [s.id for s in screen.sessions] == ["s-1", "s-2", "s-3"]
        assert "Fixed the sign in add()" in detail(screen)
        await pilot.press("down")
        assert "argparse entry point" in detail(screen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, SessionPickerScreen))
        assert catalog.calls == [("list", "")]


async def test_resume_shuts_down_and_switches_handle(make_app, catalog, wait_for):
    app = make_app(catalog=catalog)
    old = app.handle
    async with app.run_test(size=SIZE) as pilot:
        app.main.prompt.load_text("hello")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.main.turns.busy)
        await open_picker(app, pilot, wait_for)
        await pilot.press("down", "enter")  # s-2
        await wait_for(pilot, lambda: app.handle is not old)
        assert old.ops[-1] == Shutdown() and old.closed
        assert catalog.calls[-1] == ("open", "s-2")
        await wait_for(pilot, lambda: app.info.session_id == "s-2")
        assert not app.main.transcript.query(UserMessage)  # the old conversation is gone
        card = str(app.main.query_one(Notice).render())
        assert "Resumed s-2: Add a CLI" in card and "argparse entry point" in card
        app.main.prompt.load_text("continue")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.handle.ops)
        assert app.handle.ops == [UserInput("continue")]
        assert old.ops_of(UserInput) == [UserInput("hello")]


async def test_resuming_the_open_session_does_nothing(make_app, catalog, wait_for):
    app = make_app(catalog=catalog)
    old = app.handle
    async with app.run_test(size=SIZE) as pilot:
        await open_picker(app, pilot, wait_for)
        await pilot.press("enter")  # s-1 is the open one
        await wait_for(pilot, lambda: not isinstance(app.screen, SessionPickerScreen))
        assert app.handle is old and old.ops == []


async def test_fork_opens_the_copy(make_app, catalog, wait_for):
    app = make_app(catalog=catalog)
    async with app.run_test(size=SIZE) as pilot:
        await open_picker(app, pilot, wait_for)
        await pilot.press("f")  # fork s-1, the open session
        await wait_for(pilot, lambda: app.info.session_id == "s-1-fork")
        assert catalog.calls[-2:] == [("fork", "s-1"), ("open", "s-1-fork")]
        await wait_for(pilot, lambda: app.main.query(Notice))
        assert "Forked s-1 as s-1-fork" in str(app.main.query_one(Notice).render())


async def test_delete_needs_a_second_press(make_app, catalog, wait_for):
    app = make_app(catalog=catalog)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_picker(app, pilot, wait_for)
        await pilot.press("d")  # s-1 is open: refused
        assert "cannot be deleted" in str(screen.query_one("#hint").render())
        await pilot.press("down", "d")
        assert screen.has_class("-confirm-delete")
        assert ("delete", "s-2") not in catalog.calls
        await pilot.press("d")
        await wait_for(pilot, lambda: len(screen.sessions) == 2)
        assert ("delete", "s-2") in catalog.calls
        assert [s.id for s in screen.sessions] == ["s-1", "s-3"]
        assert not screen.has_class("-confirm-delete")


async def test_moving_disarms_delete(make_app, catalog, wait_for):
    app = make_app(catalog=catalog)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_picker(app, pilot, wait_for)
        await pilot.press("down", "d", "down", "d")
        assert screen.has_class("-confirm-delete")
        assert not any(call[0] == "delete" for call in catalog.calls)


async def test_without_catalog(make_app, wait_for):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not isinstance(app.screen, SessionPickerScreen)
        assert "not available" in str(app.main.query_one("Notice").render())


async def test_open_failure_is_reported(make_app, catalog, wait_for):
    def broken(session_id: str):
        raise OSError("page file s-2/0007 is corrupt")

    catalog.open = broken
    app = make_app(catalog=catalog)
    async with app.run_test(size=SIZE) as pilot:
        await open_picker(app, pilot, wait_for)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.main.query(Notice))
        assert "page file s-2/0007 is corrupt" in str(app.main.query_one(Notice).render())
        assert app.main.closed  # the old session was shut down first
