"""An edit's unified diff, shown unified or side by side."""

from __future__ import annotations

from typing import Literal

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui.diff import DiffRow, parse_unified, side_by_side

DiffMode = Literal["auto", "unified", "split"]
WIDE_COLUMNS = 140  # in "auto", terminals at least this wide get side by side
MAX_ROWS = 400  # beyond this the diff is cut; the tool output still has all of it
_NUMBER_WIDTH = 4


class DiffView(Widget):
    """A diff; state class `-split` when shown side by side.

    `mode` is "unified", "split", or "auto" (side by side on a terminal of WIDE_COLUMNS or more).
    """

    COMPONENT_CLASSES = {
        "diff-view--add",
        "diff-view--del",
        "diff-view--hunk",
        "diff-view--file",
        "diff-view--number",
    }

    DEFAULT_CSS = """
    DiffView {
        height: auto;
        margin: 0 0 0 2;
        background: $surface;
        & > .diff-view--add { background: $success-muted; color: $text; }
        & > .diff-view--del { background: $error-muted; color: $text; }
        & > .diff-view--hunk { color: $text-accent; }
        & > .diff-view--file { color: $text-muted; text-style: bold; }
        & > .diff-view--number { color: $text-disabled; }
    }
    """

    mode: reactive[DiffMode] = reactive("auto")

    def __init__(self, diff: str, mode: DiffMode = "auto") -> None:
        super().__init__()
        rows = parse_unified(diff)
        self._hidden = max(0, len(rows) - MAX_ROWS)
        self._rows = rows[:MAX_ROWS]
        self.set_reactive(DiffView.mode, mode)

    def on_mount(self) -> None:
        self._update_split()

    def on_resize(self) -> None:
        self._update_split()

    def watch_mode(self) -> None:
        self._update_split()

    def _update_split(self) -> None:
        wide = self.app.size.width >= WIDE_COLUMNS
        split = self.mode == "split" or (self.mode == "auto" and wide)
        if split != self.has_class("-split"):
            self.set_class(split, "-split")
            self.refresh(layout=True)

    def render(self) -> Text:
        text = self._split_text() if self.has_class("-split") else self._unified_text()
        if self._hidden:
            text.append(f"\n… {self._hidden} more lines", self._style("file"))
        return text

    def _style(self, kind: str) -> Style:
        return self.get_component_rich_style(f"diff-view--{kind}", partial=True)

    def _unified_text(self) -> Text:
        lines = [self._unified_line(row, self.size.width) for row in self._rows]
        return Text("\n", overflow="fold").join(lines)

    def _unified_line(self, row: DiffRow, width: int) -> Text:
        if row.kind in ("file", "hunk"):
            return Text(row.text, self._style(row.kind))
        sign = {"add": "+", "del": "-", "context": " "}[row.kind]
        gutter = _number(row.old_no) + " " + _number(row.new_no) + " "
        line = Text(gutter, self._style("number")) + Text(sign + row.text.expandtabs(4))
        # Padded so an added or removed line is coloured across the whole width.
        line.pad_right(max(0, width - line.cell_len))
        if row.kind != "context":
            line.stylize(self._style(row.kind), len(gutter))
        return line

    def _split_text(self) -> Text:
        half = max(10, (self.size.width - 1) // 2)
        lines: list[Text] = []
        for pair in side_by_side(self._rows):
            if pair.old is not None and pair.old is pair.new and pair.old.kind != "context":
                lines.append(Text(pair.old.text, self._style(pair.old.kind)))
                continue
            left = self._side(pair.old, pair.old.old_no if pair.old else None, half)
            right = self._side(pair.new, pair.new.new_no if pair.new else None, half)
            lines.append(left + Text("│", self._style("number")) + right)
        return Text("\n", no_wrap=True).join(lines)

    def _side(self, row: DiffRow | None, number: int | None, width: int) -> Text:
        cell = Text(_number(number) + " ", self._style("number"))
        if row is not None:
            body = Text(row.text.expandtabs(4))
            if row.kind != "context":
                body.stylize(self._style(row.kind))
            cell += body
        cell.truncate(width, overflow="ellipsis", pad=True)
        if row is not None and row.kind != "context":
            cell.stylize(self._style(row.kind), _NUMBER_WIDTH + 1)
        return cell


def _number(n: int | None) -> str:
    return f"{n:>{_NUMBER_WIDTH}}" if n is not None else " " * _NUMBER_WIDTH
