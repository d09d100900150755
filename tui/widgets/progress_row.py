"""A progress bar for one kind of long work (load, ingest, restore, prefill) with rate and ETA."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from tui.formatting import duration, tokens


class ProgressRow(Horizontal):
    """Progress of one kind of work; `-indeterminate` while the total is unknown.

    The rate is measured from the first update this row saw, with the injected clock, so tests
    (and snapshots) can fix it.
    """

    DEFAULT_CSS = """
    ProgressRow {
        height: 1;
        padding: 0 1;
        & > .progress-kind { width: 9; color: $text-accent; text-style: bold; }
        & > ProgressBar { width: auto; margin: 0 1 0 0; }
        & > .progress-detail { width: 1fr; color: $text-muted; }
    }
    """

    def __init__(self, kind: str, clock: Callable[[], float]) -> None:
        super().__init__(id=f"progress-{kind}")
        self.kind = kind
        self._clock = clock
        self._start: tuple[float, int] | None = None
        self._bar = ProgressBar(total=None, show_eta=False)
        self._detail = Label(classes="progress-detail")

    def compose(self) -> ComposeResult:
        yield Label(self.kind, classes="progress-kind")
        yield self._bar
        yield self._detail

    def update_progress(self, done: int, total: int, unit: str) -> None:
        """Move the bar and refresh the rate and ETA."""
        now = self._clock()
        if self._start is None or done < self._start[1]:
            self._start = (now, done)
        self.set_class(total <= 0, "-indeterminate")
        self._bar.update(total=total if total > 0 else None, progress=done)
        self._detail.update(self._describe(done, total, unit, now))

    def _describe(self, done: int, total: int, unit: str, now: float) -> str:
        assert self._start is not None, "update_progress sets the start first"
        amount = f"{tokens(done)}/{tokens(total)} {unit}" if total > 0 else f"{tokens(done)} {unit}"
        t0, done0 = self._start
        if now <= t0 or done <= done0:
            return amount
        rate = (done - done0) / (now - t0)
        text = f"{amount} · {tokens(rate)} {unit}/s"
        if total > done:
            text += f" · ETA {duration((total - done) / rate)}"
        return text
