"""A line from the app rather than the model: notes, errors, command output."""

from __future__ import annotations

from typing import Literal

from textual.content import Content
from textual.widgets import Static

NoticeKind = Literal["info", "note", "error"]


class Notice(Static):
    """A short message in the transcript; its kind is a state class (`-info`, `-note`, `-error`)."""

    DEFAULT_CSS = """
    Notice {
        margin: 1 0 0 0;
        padding: 0 1;
        color: $text-muted;
        &.-note { border-left: thick $secondary; }
        &.-error { color: $text-error; border-left: thick $error; }
        &.-info { border-left: thick $accent; color: $text; }
    }
    """

    def __init__(
        self, content: str | Content, kind: NoticeKind = "info", id: str | None = None
    ) -> None:
        # Plain strings come from the agent or tools: never interpret them as markup.
        super().__init__(Content(content) if isinstance(content, str) else content, id=id)
        self.add_class(f"-{kind}")
