"""The bottom line: model, context fill, cache reuse of the last turn, speed, KV per tier."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from agent.events import KVStats, Usage
from tui.formatting import percent, tokens
from tui.info import AppInfo

CONTEXT_WARN = 0.8  # past this fraction of the window the context figure turns to a warning


class StatusBar(Static):
    """Numbers about the session. State classes: `-busy` while a turn runs, `-full` when the
    context passes CONTEXT_WARN of the window, `-closed` once the agent has shut down."""

    DEFAULT_CSS = """
    StatusBar {
        height: auto;
        max-height: 3;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
        &.-busy { background: $panel-lighten-1; }
        &.-closed { color: $text-error; }
    }
    """

    def __init__(self, info: AppInfo) -> None:
        super().__init__(id="status")
        self.info = info
        self.usage: Usage | None = None
        self.kv: KVStats | None = None
        self.state = ""  # a word about what the app is doing, e.g. "working"

    def on_mount(self) -> None:
        self.refresh_content()

    def on_resize(self) -> None:
        self.refresh_content()

    def set_info(self, info: AppInfo) -> None:
        self.info = info
        self.refresh_content()

    def reset(self, info: AppInfo) -> None:
        """Another session is in view: forget this one's usage and pages."""
        self.usage, self.kv = None, None
        self.remove_class("-full")
        self.set_info(info)

    def set_usage(self, usage: Usage) -> None:
        self.usage = usage
        window = usage.context_window or self.info.context_window
        self.set_class(window > 0 and usage.context_tokens >= CONTEXT_WARN * window, "-full")
        self.refresh_content()

    def set_kv(self, kv: KVStats) -> None:
        self.kv = kv
        self.refresh_content()

    def set_state(self, state: str, busy: bool = False, closed: bool = False) -> None:
        self.state = state
        self.set_class(busy, "-busy")
        self.set_class(closed, "-closed")
        self.refresh_content()

    def refresh_content(self) -> None:
        parts = [
            self._part_state(),
            self._part_model(),
            self._part_context(),
            self._part_cache(),
            self._part_speed(),
            self._part_tiers(),
        ]
        self.update(_pack([part for part in parts if part], self.content_size.width))

    def _part_state(self) -> Content:
        return Content.styled(f"● {self.state}", "bold $text-warning") if self.state else Content()

    def _part_model(self) -> Content:
        return Content.styled(self.info.model, "bold $text") if self.info.model else Content()

    def _part_context(self) -> Content:
        used = self.usage.context_tokens if self.usage else 0
        window = (self.usage.context_window if self.usage else 0) or self.info.context_window
        if not window and not used:
            return Content()
        style = "$text-error" if self.has_class("-full") else "$text"
        share = percent(used, window)
        text = f"ctx {tokens(used)}/{tokens(window)}" + (f" {share}" if share else "")
        return Content.styled(text, style)

    def _part_cache(self) -> Content:
        if self.usage is None:
            return Content()
        tiers = " ".join(f"{tier} {tokens(n)}" for tier, n in self.usage.cached_by_tier.items())
        cached = f"cached {tokens(self.usage.cached_input_tokens)}"
        cached += f" ({tiers})" if tiers else ""
        return Content(f"{cached} · computed {tokens(self.usage.computed_tokens)}")

    def _part_speed(self) -> Content:
        if self.usage is None or not self.usage.decode_tok_s:
            return Content()
        return Content(f"{self.usage.decode_tok_s:.1f} tok/s")

    def _part_tiers(self) -> Content:
        if self.kv is None:
            return Content()
        page = self.kv.page_size
        return Content(
            f"KV device {tokens(self.kv.device_pages * page)}"
            f" · host {tokens(self.kv.host_pages * page)}"
            f" · disk {tokens(self.kv.disk_pages * page)}"
        )


def _pack(parts: list[Content], width: int, gap: int = 2) -> Content:
    """Parts on as few lines as fit `width`, never breaking a part (wrapping would split
    "41.5 tok/s" across lines)."""
    lines: list[list[Content]] = [[]]
    used = 0
    for part in parts:
        if lines[-1] and width > 0 and used + gap + part.cell_length > width:
            lines.append([])
            used = 0
        used += part.cell_length + (gap if lines[-1] else 0)
        lines[-1].append(part)
    return Content("\n").join(Content(" " * gap).join(line) for line in lines)
