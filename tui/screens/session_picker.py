"""Saved sessions: resume one, fork one, or delete one, reading each one's summary first."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.catalog import SessionCatalog, SessionSummary
from tui.formatting import clip, tokens
from tui.messages import SessionsListed, TaskFailed

log = logging.getLogger(__name__)

HINT = "enter resume · f fork · d delete · esc close"


@dataclass(frozen=True)
class SessionChoice:
    """What the user picked: resume a session as it is, or fork it and resume the copy."""

    action: Literal["resume", "fork"]
    session: SessionSummary


class SessionPickerScreen(ModalScreen[SessionChoice | None]):
    """The catalog's sessions with the highlighted one's summary.

    Delete asks for a second `d`; state class `-confirm-delete` while it waits. The session the
    app is showing cannot be deleted. Catalog calls run in a worker thread.
    """

    CSS_PATH = "session_picker.tcss"

    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("f", "fork", "fork"),
        Binding("d", "delete", "delete"),
    ]

    def __init__(self, catalog: SessionCatalog, current_id: str = "") -> None:
        super().__init__()
        self.catalog = catalog
        self.current_id = current_id
        self.sessions: list[SessionSummary] = []
        self._delete_armed: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Sessions", id="title")
            yield OptionList(id="sessions")
            yield Static(id="detail")
            yield Label(HINT, id="hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).loading = True
        self._load()

    @work(thread=True, exclusive=True, group="catalog")
    def _load(self, delete: str | None = None) -> None:
        try:
            if delete is not None:
                self.catalog.delete(delete)
            sessions = self.catalog.list()
        except Exception as exc:
            log.exception("session catalog failed")
            self.post_message(TaskFailed("the session catalog", str(exc)))
            return
        self.post_message(SessionsListed(sessions))

    def on_sessions_listed(self, message: SessionsListed) -> None:
        self.sessions = message.sessions
        options = self.query_one(OptionList)
        options.loading = False
        options.set_options(Option(self._option(s), id=s.id) for s in self.sessions)
        if self.sessions:
            options.highlighted = 0
        self._show_detail()
        options.focus()

    def on_task_failed(self, message: TaskFailed) -> None:
        self.query_one(OptionList).loading = False
        self.query_one("#detail", Static).update(Content(f"Error: {message.error}"))

    def _option(self, session: SessionSummary) -> Content:
        when = session.updated_at.strftime("%Y-%m-%d %H:%M")
        mark = " (open)" if session.id == self.current_id else ""
        return Content.assemble(
            (clip(session.title or session.id, 40) + mark, "bold"),
            (f"\n{when} · {session.turns} turns · {tokens(session.tokens)} tokens", "$text-muted"),
        )

    @property
    def highlighted(self) -> SessionSummary | None:
        index = self.query_one(OptionList).highlighted
        return self.sessions[index] if index is not None and self.sessions else None

    @on(OptionList.OptionHighlighted)
    def _show_detail(self) -> None:
        self._disarm()
        session = self.highlighted
        detail = self.query_one("#detail", Static)
        if session is None:
            detail.update("No saved sessions." if self.sessions == [] else "")
            return
        detail.update(
            Content.assemble(
                (session.repo, "$text-accent"),
                f"  ·  {session.id}\n\n",
                session.summary or "(no summary)",
            )
        )

    @on(OptionList.OptionSelected)
    def _resume(self) -> None:
        session = self.highlighted
        if session is not None:
            self.dismiss(SessionChoice("resume", session))

    def action_fork(self) -> None:
        session = self.highlighted
        if session is not None:
            self.dismiss(SessionChoice("fork", session))

    def action_delete(self) -> None:
        session = self.highlighted
        if session is None:
            return
        if session.id == self.current_id:
            self._hint("This session is open; it cannot be deleted.")
        elif self._delete_armed == session.id:
            self._disarm()
            self.query_one(OptionList).loading = True
            self._load(delete=session.id)
        else:
            self._delete_armed = session.id
            self.add_class("-confirm-delete")
            self._hint(f"Press d again to delete “{clip(session.title, 40)}”.")

    def _disarm(self) -> None:
        self._delete_armed = None
        self.remove_class("-confirm-delete")
        self._hint(HINT)

    def _hint(self, text: str) -> None:
        self.query_one("#hint", Label).update(text)

    def action_close(self) -> None:
        self.dismiss(None)
