"""The conversation: user prompts, assistant text, tool calls and notices, newest at the bottom."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widget import Widget

from tui.widgets.user_message import UserMessage


class Transcript(VerticalScroll):
    """A scrolling column that stays pinned to the bottom while new content arrives, until the
    user scrolls up (Textual's anchor)."""

    DEFAULT_CSS = """
    Transcript {
        height: 1fr;
        padding: 0 1 1 1;
        scrollbar-size-vertical: 1;
    }
    """

    def on_mount(self) -> None:
        self.anchor()

    async def add(self, widget: Widget) -> Widget:
        """Append a widget at the bottom."""
        await self.mount(widget)
        return widget

    def turn_start(self, turn: int) -> UserMessage | None:
        """The user message that opened `turn`, if it is on screen."""
        for message in self.query(UserMessage):
            if message.turn == turn:
                return message
        return None

    async def remove_from(self, widget: Widget) -> None:
        """Remove `widget` and everything after it."""
        children = list(self.children)
        await self.remove_children(children[children.index(widget) :])
