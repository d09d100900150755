"""One tool call: what it does, how it went, its diff and its (collapsible) output."""

from __future__ import annotations

from typing import Any, Literal

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Collapsible, Static

from tui.formatting import args_summary
from tui.widgets.diff_view import DiffMode, DiffView

ToolStatus = Literal["running", "awaiting", "allowed", "denied", "ok", "failed"]
MAX_OUTPUT_LINES = 300  # the rest is what the model saw, not worth a screen of scrolling

_STATUS_TEXT: dict[ToolStatus, tuple[str, str]] = {
    "running": ("…", "running"),
    "awaiting": ("?", "waiting for approval"),
    "allowed": ("…", "allowed"),
    "denied": ("✗", "denied"),
    "ok": ("✓", ""),
    "failed": ("✗", "failed"),
}


class ToolCallView(Vertical):
    """A tool call; its status is a state class (`-running`, `-awaiting`, `-ok`, `-failed`...).

    The output sits in a Collapsible, collapsed when the call succeeded; an edit's diff
    (`metadata["diff"]`) is shown above it, always open.
    """

    DEFAULT_CSS = """
    ToolCallView {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 0 0 1;
        border-left: thick $panel-lighten-2;
        &.-running, &.-allowed { border-left: thick $accent; }
        &.-awaiting { border-left: thick $warning; }
        &.-ok { border-left: thick $success; }
        &.-failed, &.-denied { border-left: thick $error; }
        & > .tool-header { color: $text; }
        & > Collapsible {
            border-top: none;
            padding: 0;
            margin: 0;
            background: transparent;
        }
        & > Collapsible > Contents { padding: 0 0 0 2; }
        & .tool-output { color: $text-muted; }
    }
    """

    status: reactive[ToolStatus] = reactive("running")

    def __init__(self, call_id: str, name: str, args: dict[str, Any]) -> None:
        super().__init__(classes="-running")
        self.call_id = call_id
        self.tool_name = name
        self.args = args
        self._header = Static(classes="tool-header")

    def compose(self) -> ComposeResult:
        yield self._header

    def watch_status(self, old: ToolStatus, new: ToolStatus) -> None:
        self.remove_class(f"-{old}")
        self.add_class(f"-{new}")
        self._header.update(self._header_content())

    def on_mount(self) -> None:
        self._header.update(self._header_content())

    def _header_content(self) -> Content:
        icon, label = _STATUS_TEXT[self.status]
        return Content.assemble(
            (f"{icon} ", "bold"),
            (self.tool_name, "bold"),
            " ",
            (args_summary(self.tool_name, self.args), "$text-muted"),
            (f"  {label}" if label else "", "italic $text-warning"),
        )

    async def finish(
        self, ok: bool, content: str, metadata: dict[str, Any], diff_mode: DiffMode
    ) -> None:
        """Show the result: status, the diff if any, and the output."""
        self.status = "ok" if ok else "failed"
        diff = metadata.get("diff")
        if isinstance(diff, str) and diff.strip():
            await self.mount(DiffView(diff, diff_mode))
        if content.strip():
            await self.mount(self._output(content, collapsed=ok))

    @staticmethod
    def _output(content: str, collapsed: bool) -> Collapsible:
        lines = content.splitlines()
        shown = "\n".join(lines[:MAX_OUTPUT_LINES])
        if len(lines) > MAX_OUTPUT_LINES:
            shown += f"\n… {len(lines) - MAX_OUTPUT_LINES} more lines"
        title = f"output · {len(lines)} line{'s' if len(lines) != 1 else ''}"
        body = Static(Content(shown), classes="tool-output")
        return Collapsible(body, title=title, collapsed=collapsed)

    @property
    def expanded(self) -> bool | None:
        """Whether the output is open; None before there is output."""
        outputs = self.query(Collapsible)
        return not outputs.first().collapsed if outputs else None

    def set_expanded(self, expanded: bool) -> None:
        """Open or close the output."""
        for output in self.query(Collapsible):
            output.collapsed = not expanded
