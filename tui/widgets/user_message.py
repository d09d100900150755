"""A prompt the user sent, in the transcript or waiting in the queue."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static


class UserMessage(Static):
    """The user's words. State class `-queued` while the agent has not started its turn."""

    DEFAULT_CSS = """
    UserMessage {
        margin: 1 0 0 0;
        padding: 0 1;
        border-left: thick $primary;
        background: $boost;
        color: $text;
        &.-queued {
            margin: 0;
            border-left: thick $warning;
            color: $text-muted;
            background: transparent;
        }
    }
    """

    def __init__(self, text: str, *, queued: bool = False, turn: int | None = None) -> None:
        super().__init__(classes="-queued" if queued else "")
        self.text = text
        self.turn = turn  # set when the agent starts the turn; /rewind cuts here

    def on_mount(self) -> None:
        self.update(self._content())

    def _content(self) -> Content:
        if self.has_class("-queued"):
            return Content.assemble(("queued ", "bold $warning"), self.text)
        return Content(self.text)
