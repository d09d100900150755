"""A sub-agent under its parent's task call: its tool calls and text, collapsible, and what it
shared with the parent versus computed itself."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Collapsible, Static

from agent.events import SubagentFinished, SubagentStarted, ToolCallFinished
from tui.widgets.diff_view import DiffMode
from tui.widgets.tool_call import ToolCallView

MAX_TEXT_CHARS = 4000  # of its streamed text: the answer is the task call's output anyway


class SubagentView(Vertical):
    """One sub-agent; state classes `-running`, `-done`, `-stopped`. Open while it runs,
    collapsed once it answered (click the title, or Ctrl-O, to open it again)."""

    DEFAULT_CSS = """
    SubagentView {
        height: auto;
        margin: 0 0 0 1;
        & > Collapsible { border-top: none; padding: 0; margin: 0; background: transparent; }
        & > Collapsible > Contents { padding: 0 0 0 1; }
        & .subagent-usage { color: $text-muted; }
        & .subagent-text { color: $text; margin: 1 0 0 0; }
        &.-stopped .subagent-usage { color: $text-warning; }
    }
    """

    def __init__(self, started: SubagentStarted) -> None:
        super().__init__(classes="-running")
        self.started = started
        self.agent_id = started.agent_id
        self.finished: SubagentFinished | None = None
        self._tools: dict[str, ToolCallView] = {}
        self._text = ""
        self._usage = Static(self._usage_line(), classes="subagent-usage")
        self._said = Static("", classes="subagent-text")
        self._body = Vertical(self._usage, self._said)
        self._box = Collapsible(self._body, title=self._title(), collapsed=False)

    def compose(self) -> ComposeResult:
        yield self._box

    def _title(self) -> str:
        verb = "resumed" if self.started.resumed else "sub-agent"
        return f"{verb} {self.agent_id} · {self.started.description}"

    def _usage_line(self) -> Content:
        s, f = self.started, self.finished
        shared = f"{s.shared_tokens:,} tokens shared with the parent"
        if f is None:
            return Content(f"{shared} · running · up to {s.max_steps} steps")
        u = f.usage
        return Content(f"{shared} · {u.computed_tokens:,} computed · {u.output_tokens:,} "
                       f"generated · {f.steps} steps · {f.status}")

    @property
    def expanded(self) -> bool:
        return not self._box.collapsed

    def set_expanded(self, expanded: bool) -> None:
        self._box.collapsed = not expanded

    async def tool_started(self, call_id: str, name: str, args: dict[str, Any]) -> ToolCallView:
        view = self._tools.get(call_id)
        if view is None:
            view = self._tools[call_id] = ToolCallView(call_id, name, args)
            await self._body.mount(view, before=self._said)
        return view

    async def tool_finished(self, event: ToolCallFinished, diff_mode: DiffMode) -> None:
        view = await self.tool_started(event.call_id, event.name, {})
        await view.finish(event.ok, event.content, event.metadata, diff_mode)

    def stream(self, text: str) -> None:
        self._text = (self._text + text)[-MAX_TEXT_CHARS:]
        self._said.update(Content(self._text))

    def finish(self, event: SubagentFinished) -> None:
        self.finished = event
        self.remove_class("-running")
        self.add_class("-done" if event.status == "done" else "-stopped")
        self._usage.update(self._usage_line())
        if event.status == "done":
            self._box.collapsed = True
