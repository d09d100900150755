"""Snapshots of the main screen, the approval modal and the session picker, narrow and wide.

Regenerate after an intended visual change with `pytest tests/tui --snapshot-update`, and look
at the SVGs before committing them. Everything shown is fixed: scripted events, FixedClock,
dated sessions, no cursor blink.
"""

from __future__ import annotations

import pytest

from tui.screens.approval import ApprovalScreen
from tui.screens.session_picker import SessionPickerScreen

SIZES = [(80, 24), (160, 50)]


async def settle(pilot) -> None:
    pilot.app.main.prompt.cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen(snap_compare, make_app, wait_for, size):
    app = make_app()

    async def run_before(pilot) -> None:
        app.main.prompt.load_text("fix the failing test in calc.py")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.main.turns.busy and app.main.status.kv)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_approval_modal(snap_compare, make_app, make_handle, scripts, wait_for, size):
    app = make_app(make_handle(script=scripts["approval"]))

    async def run_before(pilot) -> None:
        app.main.prompt.load_text("what changed?")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen))
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_session_picker(snap_compare, make_app, catalog, wait_for, size):
    app = make_app(catalog=catalog)

    async def run_before(pilot) -> None:
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionPickerScreen))
        await wait_for(pilot, lambda: app.screen.sessions)
        await pilot.press("down")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
