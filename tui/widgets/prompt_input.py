"""The prompt: multi-line input with history; enter sends, shift+enter or ctrl+j adds a line."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.widgets import TextArea

from tui.history import PromptHistory
from tui.messages import PromptSubmitted

PLACEHOLDER = "Ask, or / for commands · ? for help · shift+enter for a new line"


class PromptInput(TextArea):
    """Where the user types. Posts PromptSubmitted; `-busy` while the agent works.

    Up on the first line and down on the last walk the history; elsewhere they move the cursor.
    """

    DEFAULT_CSS = """
    PromptInput {
        height: auto;
        min-height: 3;
        max-height: 12;
        border: round $primary 60%;
        padding: 0 1;
        &:focus { border: round $primary; }
        &.-busy { border: round $warning 60%; }
        &.-busy:focus { border: round $warning; }
    }
    """

    BINDINGS = [
        Binding("shift+enter,ctrl+j", "newline", "new line", show=False),
    ]

    def __init__(self, history: PromptHistory | None = None) -> None:
        super().__init__(
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            placeholder=PLACEHOLDER,
            id="prompt",
        )
        self.prompt_history = history or PromptHistory()

    async def _on_key(self, event: events.Key) -> None:
        # Enter sends; TextArea would insert a newline, so it must not see the key.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.submit()
            return
        await super()._on_key(event)

    def submit(self) -> None:
        """Send the text (if any), record it in the history and clear the prompt."""
        text = self.text.strip()
        if not text:
            return
        self.prompt_history.add(text)
        self.clear()
        self.post_message(PromptSubmitted(text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0:
            self._recall(self.prompt_history.older(self.text))
        else:
            super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == self.document.line_count - 1:
            self._recall(self.prompt_history.newer())
        else:
            super().action_cursor_down(select)

    def _recall(self, entry: str | None) -> None:
        if entry is None:
            return
        self.load_text(entry)
        self.move_cursor(self.document.end)
