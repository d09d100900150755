"""Pick the turn to go back to: it and everything after it are dropped."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from tui.formatting import clip


class RewindScreen(ModalScreen[int | None]):
    """Lists the turns on screen, newest first; dismisses with the chosen turn (None: esc)."""

    CSS_PATH = "rewind.tcss"

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, turns: dict[int, str]) -> None:
        super().__init__()
        self.turns = turns

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Rewind to before which turn? (enter picks, esc cancels)", id="title")
            options = [
                Option(f"turn {turn:>3}  {clip(prompt, 60)}", id=str(turn))
                for turn, prompt in sorted(self.turns.items(), reverse=True)
            ]
            yield OptionList(*options, id="turns")

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(str(event.option.id)))

    def action_cancel(self) -> None:
        self.dismiss(None)
