"""The app over real AgentSessions (a scripted model, a real store and git repository):
/context and the status bar follow the session in view, /rewind after a stopped turn, quitting
never waits on a rewind, and every session is titled by its first prompt."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from agent.backends.base import GenParams
from agent.backends.scripted import ScriptedBackend
from agent.loop import LoopConfig
from agent.session import AgentSession, SessionOptions
from cli.tui import StoreCatalog
from memory.store import SessionStore
from tui.app import AgentApp
from tui.screens.rewind import RewindScreen
from tui.screens.session_picker import SessionPickerScreen
from tui.widgets.notice import Notice
from tui.widgets.user_message import UserMessage

pytestmark = pytest.mark.asyncio

SIZE = (100, 40)


def call(name: str, **args) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    return root


def start(repo: Path, store: SessionStore, script: list, max_steps: int = 4):
    backend = ScriptedBackend(script)
    options = SessionOptions(permission_mode="auto", replay_history=True,
                             loop=LoopConfig(max_steps=max_steps, gen=GenParams()))
    session = AgentSession(backend, repo, store, options=options)
    catalog = StoreCatalog(store, backend, repo, options)
    app = AgentApp(session, catalog, rewind=session.rewind,
                   context_breakdown=session.context_breakdown)
    return app, session, backend


def notices(app) -> list[str]:
    return [str(n.render()) for n in app.main.query(Notice)]


async def send(pilot, text: str) -> None:
    pilot.app.main.prompt.load_text(text)
    await pilot.press("enter")


async def test_title_from_first_prompt_and_rewind_after_a_stopped_turn(repo, tmp_path,
                                                                       wait_for):
    store = SessionStore(tmp_path / "data")
    script = ["Hello.", call("read", path="calc.py"), call("read", path="calc.py")]
    app, session, _ = start(repo, store, script, max_steps=2)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Say\nhello   please")
        await wait_for(pilot, lambda: 1 in app.main.turn_prompts and not app.main.turns.busy)
        await send(pilot, "read it twice")  # runs out of steps: the turn stops
        await wait_for(pilot, lambda: any("turn limit" in n for n in notices(app)))
        assert store.get(session.session_id).title == "Say hello please"
        await send(pilot, "/rewind")
        await wait_for(pilot, lambda: isinstance(app.screen, RewindScreen))
        await pilot.press("enter")  # newest first: turn 2
        await wait_for(pilot, lambda: list(app.main.turn_prompts) == [1], timeout=10)
        assert app.main.prompt.text == "read it twice"
        finished = [e.turn for e in store.events(session.session_id) if e.kind == "turn_finished"]
        assert finished == [1]
        assert app.main.status.state == ""


async def test_rewind_on_a_stopped_agent_says_so_and_quitting_is_quick(repo, tmp_path,
                                                                       wait_for):
    store = SessionStore(tmp_path / "data")
    app, session, _ = start(repo, store, ["Hello."])
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hi")
        await wait_for(pilot, lambda: 1 in app.main.turn_prompts and not app.main.turns.busy)
        await send(pilot, "again")  # the script has no more replies: the session fails
        await wait_for(pilot, lambda: app.main.closed, timeout=10)
        await send(pilot, "/rewind")
        await wait_for(pilot, lambda: any("cannot rewind" in n for n in notices(app)))
        started = time.monotonic()
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running)
    assert time.monotonic() - started < 5


async def test_a_rewind_the_agent_never_answers_does_not_hold_up_quitting(repo, tmp_path,
                                                                          wait_for):
    store = SessionStore(tmp_path / "data")
    app, session, _ = start(repo, store, ["Hello."])
    release = []
    app._rewind = lambda turn: release.append(turn) or time.sleep(60)  # a stuck agent
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hi")
        await wait_for(pilot, lambda: 1 in app.main.turn_prompts and not app.main.turns.busy)
        await send(pilot, "/rewind")
        await wait_for(pilot, lambda: isinstance(app.screen, RewindScreen))
        await pilot.press("enter")
        await wait_for(pilot, lambda: release)
        assert app.main.status.state == "rewinding"
        started = time.monotonic()
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running)
    assert time.monotonic() - started < 5


async def test_context_and_status_follow_the_session_in_view(repo, tmp_path, wait_for):
    store = SessionStore(tmp_path / "data")
    (repo / "big.py").write_text("x = 1\n" * 400)  # a bigger repository: a bigger first context
    first, _, _ = start(repo, store, ["One."])
    async with first.run_test(size=SIZE) as pilot:
        await send(pilot, "first session")
        await wait_for(pilot, lambda: first.main.status.usage is not None)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not first.is_running)
    (repo / "big.py").unlink()
    app, session, _ = start(repo, store, ["Two."])
    opened = app.catalog.open

    def open_measured(session_id: str):  # the resumed session, told apart by its breakdown
        handle = opened(session_id)
        handle.context_breakdown = lambda: {"system": 4321}
        return handle

    app.catalog.open = open_measured
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "second session")
        await wait_for(pilot, lambda: app.main.status.usage is not None)
        small = app.main.status.usage.context_tokens
        await send(pilot, "/resume")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionPickerScreen))
        await pilot.press("down", "enter")  # the older session: the first one
        await wait_for(pilot, lambda: app.handle is not session, timeout=10)
        await wait_for(pilot, lambda: app.main.status.usage is not None, timeout=10)
        resumed = app.main.status.usage.context_tokens
        assert resumed > small
        await send(pilot, "/context")
        await wait_for(pilot, lambda: any("system" in n for n in notices(app)), timeout=10)
        card = next(n for n in notices(app) if "system" in n)
        assert "4,321" in card or "4.3K" in card
        assert [m.text for m in app.main.query(UserMessage)] == ["first session"]
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_the_snapshot_is_a_line_in_the_transcript(repo, tmp_path, wait_for):
    app, _, _ = start(repo, SessionStore(tmp_path / "data"), ["Hello."])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("Repository snapshot" in n for n in notices(app)))
        line = next(n for n in notices(app) if "Repository snapshot" in n)
        assert "1 files inlined" in line and "calc.py" in line
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running)
