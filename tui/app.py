"""AgentApp: the Textual app around one AgentHandle.

The app owns the session: the handle, the worker thread that pumps its events, the ops it
submits, switching sessions, and quitting. The conversation itself is MainScreen's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.worker import get_current_worker

from agent.events import Interrupt, Op, Shutdown
from agent.handle import AgentHandle
from tui.cards import session_card
from tui.catalog import SessionCatalog
from tui.event_pump import pump_events
from tui.history import PromptHistory
from tui.info import AppInfo
from tui.messages import (
    AgentClosed,
    AgentEventReceived,
    CommandEntered,
    ContextMeasured,
    Rewound,
    SessionOpened,
    TaskFailed,
    TextStreamed,
)
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.rewind import RewindScreen
from tui.screens.session_picker import SessionChoice, SessionPickerScreen

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 3.0  # how long quitting waits for the agent to flush before leaving anyway


class AgentApp(App[None]):
    """The coding agent's terminal UI, driven only by `handle`'s events.

    Args:
        handle: the running session; the app submits ops and reads events from a worker thread.
        catalog: saved sessions for the picker (/resume, ctrl+r); None hides that feature.
        info: what to show before the agent's SessionStarted arrives.
        rewind: `rewind(turn)` drops turn `turn` and every later one (code and conversation);
            called from a daemon thread while no turn runs, so a stuck one never holds up
            quitting. None: /rewind is unavailable. After a switch to another session, that
            handle's own `rewind` is used (and `context_breakdown` likewise).
        context_breakdown: tokens per context segment (e.g. {"system": 2100, "repository":
            51000, "conversation": 8000}); called from a worker thread. None: /context shows
            only the total.
        clock: seconds, for progress rates (tests pass a fixed one).
    """

    TITLE = "agent"
    BINDINGS = [
        Binding("ctrl+q", "quit", "quit", priority=True),
        Binding("f1", "help", "help"),
        Binding("ctrl+r", "sessions", "sessions"),
    ]

    def __init__(
        self,
        handle: AgentHandle,
        catalog: SessionCatalog | None = None,
        info: AppInfo | None = None,
        *,
        rewind: Callable[[int], None] | None = None,
        context_breakdown: Callable[[], dict[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handle = handle
        self.catalog = catalog
        self._initial_info = info or AppInfo()
        self._rewind = rewind
        self._context_breakdown = context_breakdown
        self._clock = clock
        self._history = PromptHistory()
        self._switching = False
        self._rewinding = False
        self._quitting = False
        self._shutdown_sent = False
        self.main: MainScreen

    async def on_mount(self) -> None:
        # Pushed rather than returned from get_default_screen: only pushed screens get their
        # CSS_PATH loaded. Events wait until it is mounted, so the pump starts after.
        self.main = MainScreen(self._initial_info, self.submit, self._clock, self._history)
        await self.push_screen(self.main)
        self._pump(self.handle)

    @property
    def info(self) -> AppInfo:
        """The model and session on screen (kept by MainScreen from SessionStarted)."""
        return self.main.info

    def on_unmount(self) -> None:
        # Leaving by any other road than quit (an exception, a signal) still saves the session.
        self._send_shutdown()

    def submit(self, op: Op) -> None:
        """Send an op to the agent (dropped once it has closed)."""
        if self.handle.closed:
            return
        try:
            self.handle.submit(op)
        except Exception as exc:  # a broken agent must not take the UI down with it
            log.exception("submitting %r failed", op)
            self.post_message(TaskFailed(f"sending {type(op).__name__}", str(exc)))

    # ---- the event pump -----------------------------------------------------------------

    @work(thread=True, exclusive=True, group="pump", name="event pump")
    def _pump(self, handle: AgentHandle) -> None:
        worker = get_current_worker()
        try:
            pump_events(handle, self.post_message, lambda: worker.is_cancelled)
        except Exception as exc:
            log.exception("reading agent events failed")
            self.post_message(TaskFailed("reading the agent's events", str(exc)))
            self.post_message(AgentClosed(handle))

    async def on_agent_event_received(self, message: AgentEventReceived) -> None:
        if message.source is self.handle:  # else from a session the app has left
            await self.main.apply(message.event)

    async def on_text_streamed(self, message: TextStreamed) -> None:
        if message.source is self.handle:
            await self.main.stream_text(message.text)

    async def on_agent_closed(self, message: AgentClosed) -> None:
        if message.source is not self.handle or self._switching or self._quitting:
            return
        self.main.set_closed()
        await self.main.add_notice("The agent has stopped.", "error")

    # ---- commands -------------------------------------------------------------------------

    async def on_command_entered(self, message: CommandEntered) -> None:
        invocation = message.invocation
        if invocation.command is None:
            await self.main.add_notice(
                f"Unknown command /{invocation.typed}; /help lists them.", "error"
            )
            return
        match invocation.command.name:
            case "help":
                self.action_help()
            case "model":
                await self.main.show_model()
            case "context":
                await self._show_context()
            case "rewind":
                await self.action_rewind()
            case "resume":
                await self.action_sessions()
            case "diff":
                self.main.action_cycle_diff()
            case "quit":
                await self.action_quit()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def _show_context(self) -> None:
        if self._context_breakdown is None:
            await self.main.show_context(None)
        else:
            self._measure_context(self._context_breakdown)

    @work(thread=True, group="context")
    def _measure_context(self, measure: Callable[[], dict[str, int]]) -> None:
        try:
            self.post_message(ContextMeasured(measure()))
        except Exception as exc:
            log.exception("context_breakdown failed")
            self.post_message(TaskFailed("measuring the context", str(exc)))

    async def on_context_measured(self, message: ContextMeasured) -> None:
        await self.main.show_context(message.breakdown)

    async def on_task_failed(self, message: TaskFailed) -> None:
        await self.main.add_notice(f"Failed {message.what}: {message.error}", "error")
        if self._rewinding and message.what.startswith("rewinding"):
            self._rewinding = False
            self.main.refresh_state()
        if self._switching:
            self._switching = False
            if self.handle.closed:  # the old session is shut down and no new one opened
                self.main.set_closed()

    # ---- rewind ---------------------------------------------------------------------------

    async def action_rewind(self) -> None:
        if self.screen is not self.main:
            return
        if self._rewind is None:
            await self.main.add_notice("Rewind is not available in this session.", "error")
        elif self.handle.closed or self.main.closed:
            await self.main.add_notice(
                "The agent has stopped, so it cannot rewind; /resume the session first.",
                "error")
        elif self._rewinding:
            await self.main.add_notice("A rewind is already under way.", "note")
        elif self.main.turns.busy:
            await self.main.add_notice(
                "Rewind waits for the turn to end (esc interrupts).", "error"
            )
        elif not self.main.turn_prompts:
            await self.main.add_notice("No turns to rewind yet.", "note")
        else:
            rewind = self._rewind

            def chosen(turn: int | None) -> None:
                if turn is not None:
                    self._run_rewind(rewind, turn)

            self.push_screen(RewindScreen(self.main.turn_prompts), chosen)

    def _run_rewind(self, rewind: Callable[[int], None], turn: int) -> None:
        """Rewind on a daemon thread: Textual's thread workers are joined at exit, and a
        rewind the agent never gets to must not keep the app from quitting."""
        self._rewinding = True
        self.main.status.set_state("rewinding", busy=True)
        threading.Thread(target=self._rewind_in_thread, args=(rewind, turn), daemon=True,
                         name="rewind").start()

    def _rewind_in_thread(self, rewind: Callable[[int], None], turn: int) -> None:
        try:
            rewind(turn)
        except Exception as exc:
            log.exception("rewind failed")
            self.post_message(TaskFailed(f"rewinding to turn {turn}", str(exc)))
            return
        self.post_message(Rewound(turn))

    async def on_rewound(self, message: Rewound) -> None:
        self._rewinding = False
        await self.main.rewound(message.turn)
        self.main.refresh_state()

    # ---- sessions -------------------------------------------------------------------------

    async def action_sessions(self) -> None:
        if self.screen is not self.main:
            return  # not over a modal (an approval waits, or the picker is already open)
        if self.catalog is None:
            await self.main.add_notice("No session store: sessions are not available.", "error")
        else:
            picker = SessionPickerScreen(self.catalog, self.info.session_id)
            self.push_screen(picker, self._session_chosen)

    def _session_chosen(self, choice: SessionChoice | None) -> None:
        if choice is None or self.catalog is None:
            return
        if choice.action == "resume" and choice.session.id == self.info.session_id:
            self.notify("That session is already open.", timeout=3)
            return
        self._switching = True
        self.workers.cancel_group(self, "pump")
        self.main.status.set_state("opening session", busy=True)
        self._send_shutdown()
        self._switch_session(self.catalog, self.handle, choice)

    @work(thread=True, exclusive=True, group="session")
    def _switch_session(
        self, catalog: SessionCatalog, old: AgentHandle, choice: SessionChoice
    ) -> None:
        try:
            _wait_closed(old, SHUTDOWN_WAIT_S)
            session_id = choice.session.id
            if choice.action == "fork":
                session_id = catalog.fork(session_id)
            handle = catalog.open(session_id)
        except Exception as exc:
            log.exception("opening session %s failed", choice.session.id)
            self.post_message(TaskFailed(f"opening session {choice.session.id}", str(exc)))
            return
        self.post_message(SessionOpened(handle, session_id, choice.session))

    async def on_session_opened(self, message: SessionOpened) -> None:
        self.handle = message.handle
        self._shutdown_sent = False
        # /rewind and /context act on the session in view, not the one the app started with.
        if self._rewind is not None:
            self._rewind = getattr(message.handle, "rewind", None)
        if self._context_breakdown is not None:
            self._context_breakdown = getattr(message.handle, "context_breakdown", None)
        await self.main.reset(replace(self.info, session_id=message.session_id))
        await self.main.add_notice(session_card(message.session_id, message.origin))
        self._switching = False
        self._pump(self.handle)

    # ---- quitting -------------------------------------------------------------------------

    async def action_quit(self) -> None:
        """Shut the agent down (it saves the session), wait briefly for it, then leave."""
        if self._quitting:
            self.exit()  # asked twice: stop waiting
            return
        self._quitting = True
        self.main.status.set_state("shutting down", busy=True)
        self._shutdown_and_exit()

    @work(exclusive=True, group="quit")
    async def _shutdown_and_exit(self) -> None:
        handle = self.handle
        self._send_shutdown()
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        while not handle.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.exit()

    def _send_shutdown(self) -> None:
        """Ask the current handle to shut down, once."""
        if not self._shutdown_sent and not self.handle.closed:
            self.handle.submit(Interrupt())  # a running turn stops now, keeping what it has
            self.handle.submit(Shutdown())
        self._shutdown_sent = True


def _wait_closed(handle: AgentHandle, timeout: float) -> None:
    """Block (in a worker thread) until `handle` is closed or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not handle.closed and time.monotonic() < deadline:
        time.sleep(0.02)
