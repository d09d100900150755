"""The conversation: user prompts, assistant text, tool calls and notices, newest at the bottom."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.content import Content
from textual.widget import Widget

from tui.widgets.notice import Notice
from tui.widgets.user_message import UserMessage

MAX_ITEMS = 400  # past this, the oldest are dropped from the screen (the agent keeps them)
TRIM_ITEMS = 100  # how many go at once, so trimming is rare


class Transcript(VerticalScroll):
    """A scrolling column pinned to the bottom while new content arrives, until the user
    scrolls up (Textual's anchor).

    Hours of conversation would mean thousands of widgets and a slow layout on every streamed
    token, so only the newest MAX_ITEMS are kept on screen, under a note counting the rest.
    """

    DEFAULT_CSS = """
    Transcript {
        height: 1fr;
        padding: 0 1 1 1;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.hidden = 0  # items dropped from the top

    def on_mount(self) -> None:
        self.anchor()

    async def add(self, widget: Widget) -> Widget:
        """Append a widget at the bottom."""
        await self.mount(widget)
        if len(self.items) > MAX_ITEMS:
            await self._trim()
        return widget

    @property
    def items(self) -> list[Widget]:
        """The conversation's widgets, oldest first (without the hidden-items note)."""
        return [child for child in self.children if child.id != "earlier"]

    async def _trim(self) -> None:
        old = self.items[:TRIM_ITEMS]
        self.hidden += len(old)
        await self.remove_children(old)
        text = f"… {self.hidden} earlier items are not shown; the agent still has them."
        notes = self.query("#earlier")
        if notes:
            notes.first(Notice).update(Content(text))
        else:
            await self.mount(Notice(text, "note", id="earlier"), before=0)

    def turn_start(self, turn: int) -> UserMessage | None:
        """The user message that opened `turn`, if it is on screen."""
        for message in self.query(UserMessage):
            if message.turn == turn:
                return message
        return None

    async def remove_turns_from(self, turn: int) -> None:
        """Remove turn `turn` and everything after it."""
        start = self.turn_start(turn)
        items = self.items
        if start is not None:
            await self.remove_children(items[items.index(start) :])
        elif self.hidden and all(m.turn is None or m.turn > turn for m in self.query(UserMessage)):
            await self.remove_children(items)  # the turn's start was trimmed off the top

    async def clear(self) -> None:
        """Remove everything."""
        await self.remove_children()
        self.hidden = 0
