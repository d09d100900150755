"""The conversation screen: transcript, progress, queued prompts, the prompt and the status bar.

It turns agent events into widgets and prompts into ops; it never talks to the handle itself,
only through the `submit` callable the app gives it.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen

from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Error,
    Event,
    Interrupt,
    KVStats,
    Nested,
    Note,
    Op,
    Progress,
    SessionStarted,
    SnapshotTaken,
    SubagentFinished,
    SubagentStarted,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    UserInput,
)
from tui import commands
from tui.cards import context_card, model_card, snapshot_line
from tui.history import PromptHistory
from tui.info import AppInfo
from tui.messages import CommandEntered, PromptSubmitted
from tui.screens.approval import ApprovalScreen
from tui.turn_queue import Pending, TurnQueue
from tui.widgets.assistant_message import AssistantMessage
from tui.widgets.diff_view import DiffMode, DiffView
from tui.widgets.notice import Notice, NoticeKind
from tui.widgets.progress_row import ProgressRow
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_bar import StatusBar
from tui.widgets.subagent import SubagentView
from tui.widgets.tool_call import ToolCallView
from tui.widgets.transcript import Transcript
from tui.widgets.user_message import UserMessage

_DIFF_MODES: tuple[DiffMode, ...] = ("auto", "unified", "split")
_UNFINISHED = {
    "interrupted": "interrupted",
    "turn_limit": "stopped: turn limit reached",
    "error": "stopped by an error",
}


class MainScreen(Screen[None]):
    """The conversation. `apply(event)` shows an agent event; prompts go out through `submit`."""

    CSS_PATH = "main.tcss"

    BINDINGS = [
        Binding("escape", "interrupt", "interrupt"),
        Binding("ctrl+o", "toggle_outputs", "tool output"),
        Binding("ctrl+t", "cycle_diff", "diff layout"),
    ]

    def __init__(
        self,
        info: AppInfo,
        submit: Callable[[Op], None],
        clock: Callable[[], float],
        history: PromptHistory | None = None,
    ) -> None:
        super().__init__()
        self.info = info
        self.turns = TurnQueue()
        self.turn_prompts: dict[int, str] = {}  # turns on screen, for /rewind
        self.diff_mode: DiffMode = "auto"
        self.closed = False
        self._submit = submit
        self._clock = clock
        self._history = history
        self._assistant: AssistantMessage | None = None
        self._tools: dict[str, ToolCallView] = {}
        self._subagents: dict[str, SubagentView] = {}  # by the parent's task call id
        self._pending_views: list[tuple[Pending, UserMessage]] = []
        self._approvals: dict[str, ApprovalScreen] = {}
        self._progress: dict[str, ProgressRow] = {}
        self._interrupting = False

    def compose(self) -> ComposeResult:
        yield Transcript(id="transcript")
        yield Vertical(id="progress")
        yield Vertical(id="queue")
        yield PromptInput(self._history)
        yield StatusBar(self.info)

    @property
    def transcript(self) -> Transcript:
        return self.query_one(Transcript)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    def on_mount(self) -> None:
        self.prompt.focus()

    # ---- prompts and commands ----------------------------------------------------------

    async def on_prompt_submitted(self, message: PromptSubmitted) -> None:
        message.stop()
        invocation = commands.parse(message.text)
        if invocation is not None:
            self.app.post_message(CommandEntered(invocation))
        else:
            await self.send(message.text)

    async def send(self, text: str) -> None:
        """Send a prompt; shown in the transcript, or as queued while the agent is busy."""
        if self.closed:
            await self.add_notice("The agent has stopped; /resume a session or ctrl+q.", "error")
            return
        item = self.turns.submit(text)
        view = UserMessage(text, queued=item.queued)
        self._pending_views.append((item, view))
        if item.queued:
            await self.query_one("#queue").mount(view)
        else:
            self.transcript.anchor()
            await self.transcript.add(view)
        self._submit(UserInput(text))
        self._show_state()

    def action_interrupt(self) -> None:
        if self.turns.busy and not self.closed:
            self._interrupting = True
            self._submit(Interrupt())
            self._show_state()

    def action_toggle_outputs(self) -> None:
        views = [v for v in self.query(ToolCallView) if v.expanded is not None]
        expand = any(not v.expanded for v in views)
        for view in views:
            view.set_expanded(expand)

    def action_cycle_diff(self) -> None:
        self.diff_mode = _DIFF_MODES[(_DIFF_MODES.index(self.diff_mode) + 1) % len(_DIFF_MODES)]
        for view in self.query(DiffView):
            view.mode = self.diff_mode
        self.notify(f"Diffs: {self.diff_mode}", timeout=2)

    # ---- agent events ---------------------------------------------------------------------

    async def apply(self, event: Event) -> None:
        """Show one agent event."""
        match event:
            case SessionStarted():
                self._session_started(event)
            case Progress():
                await self._show_progress(event)
            case TurnStarted():
                await self._turn_started(event)
            case ToolCallStarted():
                await self._end_text()
                await self._tool_view(event.call_id, event.name, event.args)
            case ToolCallFinished():
                await self._tool_finished(event)
            case ApprovalRequested():
                await self._approval_requested(event)
            case Note():
                await self.add_notice(event.text, "note")
            case SnapshotTaken():
                await self.add_notice(snapshot_line(event), "note")
            case TurnFinished():
                await self._turn_finished(event)
            case KVStats():
                self.status.set_kv(event)
            case Error():
                await self._error(event)
            case SubagentStarted():
                await self._subagent_started(event)
            case SubagentFinished():
                if event.call_id in self._subagents:
                    self._subagents[event.call_id].finish(event)
            case Nested():
                await self._nested(event)

    async def stream_text(self, text: str) -> None:
        """Append streamed assistant text, starting a new message after a tool call."""
        if self._assistant is None:
            self._assistant = AssistantMessage()
            await self.transcript.add(self._assistant)
        await self._assistant.write(text)

    def _session_started(self, event: SessionStarted) -> None:
        self.info = AppInfo.from_session(event)
        self.status.set_info(self.info)
        self._clear_indeterminate_progress()

    async def _turn_started(self, event: TurnStarted) -> None:
        await self._end_text()
        self._clear_indeterminate_progress()
        taken = {id(item) for item in self.turns.started(event.prompt)}
        shown: UserMessage | None = None
        for item, view in [pair for pair in self._pending_views if id(pair[0]) in taken]:
            self._pending_views.remove((item, view))
            if item.queued:
                await view.remove()
            else:
                shown = view
        if shown is None:
            shown = UserMessage(event.prompt)
            await self.transcript.add(shown)
        shown.turn = event.turn
        self.turn_prompts[event.turn] = event.prompt
        self._show_state()

    async def _turn_finished(self, event: TurnFinished) -> None:
        if self._assistant is None and event.text.strip():
            await self.stream_text(event.text)  # a backend that does not stream
        await self._end_text()
        self._withdraw_approvals()
        self._clear_indeterminate_progress()
        self._tools.clear()  # call ids do not outlive their turn
        self._subagents.clear()
        self.turns.finished()
        self._interrupting = False
        self.status.set_usage(event.usage)
        if event.status in _UNFINISHED:
            await self.add_notice(f"Turn {event.turn} {_UNFINISHED[event.status]}.", "note")
        self._show_state()

    async def _end_text(self) -> None:
        if self._assistant is not None:
            await self._assistant.finish()
            self._assistant = None

    async def _tool_view(self, call_id: str, name: str, args: dict) -> ToolCallView:
        view = self._tools.get(call_id)
        if view is None:
            view = self._tools[call_id] = ToolCallView(call_id, name, args)
            await self.transcript.add(view)
        return view

    async def _tool_finished(self, event: ToolCallFinished) -> None:
        await self._end_text()
        view = await self._tool_view(event.call_id, event.name, {})
        await view.finish(event.ok, event.content, event.metadata, self.diff_mode)

    async def _subagent_started(self, event: SubagentStarted) -> None:
        await self._end_text()
        task = await self._tool_view(event.call_id, "task", {})
        view = self._subagents[event.call_id] = SubagentView(event)
        await task.mount(view)

    async def _nested(self, nested: Nested) -> None:
        """A sub-agent's event, shown inside its SubagentView."""
        view = self._subagents.get(nested.parent_call_id)
        if view is None:
            return
        match nested.event:
            case ToolCallStarted() as e:
                await view.tool_started(e.call_id, e.name, e.args)
            case ToolCallFinished() as e:
                await view.tool_finished(e, self.diff_mode)
            case TokenDelta() as e:
                view.stream(e.text)
            case ApprovalRequested() as e:
                await self._approval_requested(e, view)
            case Error() | Note() as e:
                view.stream(f"\n{getattr(e, 'message', '') or getattr(e, 'text', '')}\n")

    async def _approval_requested(self, event: ApprovalRequested,
                                  within: SubagentView | None = None) -> None:
        await self._end_text()
        if within is not None:
            view = await within.tool_started(event.call_id, event.name, event.args)
        else:
            view = await self._tool_view(event.call_id, event.name, event.args)
        view.status = "awaiting"
        screen = self._approvals[event.call_id] = ApprovalScreen(event)

        def answered(decision: ApprovalDecision | None) -> None:
            self._approvals.pop(event.call_id, None)
            if decision is not None:
                view.status = "denied" if decision.decision == "deny" else "allowed"
                self._submit(decision)
            self._show_state()

        self.app.push_screen(screen, answered)
        self._show_state()

    def _withdraw_approvals(self) -> None:
        # Newest first: only the top screen of the stack can be dismissed.
        for screen in reversed(list(self._approvals.values())):
            screen.dismiss(None)

    async def _error(self, event: Error) -> None:
        await self.add_notice(event.message, "error")
        if event.fatal:
            self.set_closed()

    async def _show_progress(self, event: Progress) -> None:
        row = self._progress.get(event.kind)
        if event.total > 0 and event.done >= event.total:
            if row is not None:
                del self._progress[event.kind]
                await row.remove()
            return
        if row is None:
            row = self._progress[event.kind] = ProgressRow(event.kind, self._clock)
            await self.query_one("#progress").mount(row)
        row.update_progress(event.done, event.total, event.unit)

    def _clear_indeterminate_progress(self) -> None:
        # Work of unknown size never reports its end; the next stage of the session does.
        for kind, row in list(self._progress.items()):
            if row.has_class("-indeterminate"):
                del self._progress[kind]
                row.remove()

    # ---- state and notices ------------------------------------------------------------

    def refresh_state(self) -> None:
        """Show the state again (after work the app did outside a turn, e.g. a rewind)."""
        self._show_state()

    def _show_state(self) -> None:
        if self.closed:
            state = "stopped"
        elif self._approvals:
            state = "waiting for approval"
        elif self._interrupting:
            state = "interrupting"
        elif self.turns.busy:
            state = "working"
        else:
            state = ""
        self.status.set_state(state, busy=self.turns.busy, closed=self.closed)
        self.prompt.set_class(self.turns.busy, "-busy")

    def set_closed(self) -> None:
        """The agent is gone: nothing queued will run."""
        self.closed = True
        self.turns.reset()
        for _item, view in self._pending_views:
            if view.has_class("-queued"):
                view.remove()
        self._pending_views.clear()
        self._show_state()

    async def add_notice(self, content: str | Content, kind: NoticeKind = "info") -> None:
        """A message from the app in the transcript."""
        await self.transcript.add(Notice(content, kind))

    async def show_model(self) -> None:
        """The /model card."""
        await self.add_notice(model_card(self.info))

    async def show_context(self, breakdown: dict[str, int] | None) -> None:
        """The /context card: tokens by segment against the window."""
        usage = self.status.usage
        window = (usage.context_window if usage else 0) or self.info.context_window
        used = usage.context_tokens if usage else 0
        await self.add_notice(context_card(breakdown, used, window))

    async def rewound(self, turn: int) -> None:
        """Turn `turn` and later are gone: drop them and put the prompt back to edit."""
        prompt = self.turn_prompts.get(turn, "")
        await self.transcript.remove_turns_from(turn)
        self.turn_prompts = {t: p for t, p in self.turn_prompts.items() if t < turn}
        self.prompt.load_text(prompt)
        self.prompt.move_cursor(self.prompt.document.end)
        await self.add_notice(f"Rewound to before turn {turn}.", "note")

    async def reset(self, info: AppInfo) -> None:
        """A new session replaces this one: start from an empty screen."""
        await self._end_text()
        self._withdraw_approvals()
        await self.transcript.clear()
        await self.query_one("#queue").remove_children()
        await self.query_one("#progress").remove_children()
        self.info = info
        self.turns.reset()
        self.turn_prompts.clear()
        self._tools.clear()
        self._pending_views.clear()
        self._progress.clear()
        self._assistant = None
        self.closed = False
        self.status.reset(info)
        self._show_state()
