"""The repository as the model first sees it, within the token budget the session gives it.

Files are taken in the order of `repo_order.rank` (README, files the task names, source and
docs by git history, then metadata and generated files) until the token budget is spent, and
laid out least to most recently changed (stable first, volatile last). A README or task-named
file too big to fit whole goes in as an excerpt: the definitions the task names, else its head.
Binary, huge, linked and oddly named files are listed, never inlined; the list of what was left
out counts against the same budget and is summarised by folder when long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.events import SnapshotTaken
from agent.repo_files import MAX_FILE_BYTES, FileEntry, classify, list_files, read_inside
from agent.repo_listing import listing
from agent.repo_order import README, TASK, Ranked, definition_span, identifiers, rank

__all__ = ["MAX_FILE_BYTES", "FileEntry", "Snapshot", "take_snapshot"]

EVENT_PATHS = 1000  # paths named per list in the snapshot event (counts are always whole)
_MISSES = 200  # files in a row that did not fit: the budget is spent, stop reading


@dataclass
class Snapshot:
    """The rendered snapshot and an account of what it holds and leaves out."""

    text: str
    included: list[FileEntry] = field(default_factory=list)
    excerpts: dict[str, str] = field(default_factory=dict)  # path -> "lines a-b" shown
    listed_only: list[FileEntry] = field(default_factory=list)  # binary, huge, links, odd names
    left_out: list[FileEntry] = field(default_factory=list)  # text files over the budget
    tokens: int = 0
    budget: int = 0

    def report(self) -> str:
        """One line for the user: what went in and what did not."""
        msg = f"{len(self.included)} files inlined ({self.tokens} of {self.budget} tokens)"
        if self.excerpts:
            msg += f", {len(self.excerpts)} as excerpts"
        if self.listed_only:
            msg += f", {len(self.listed_only)} binary/huge/linked listed"
        if self.left_out:
            msg += f", {len(self.left_out)} left out over the token budget"
        return msg

    def whole(self) -> list[FileEntry]:
        """The files inlined whole (not as excerpts): the model has seen all of them."""
        return [e for e in self.included if e.shown not in self.excerpts]

    def event(self) -> SnapshotTaken:
        """The `snapshot` event every front end shows."""
        return SnapshotTaken(
            inlined=[e.shown for e in self.included][:EVENT_PATHS],
            excerpts={shown: lines for shown, lines in list(self.excerpts.items())[:EVENT_PATHS]},
            left_out=[e.shown for e in self.left_out][:EVENT_PATHS],
            listed=[f"{e.shown} ({e.kind})" for e in self.listed_only][:EVENT_PATHS],
            inlined_count=len(self.included), left_out_count=len(self.left_out),
            listed_count=len(self.listed_only), tokens=self.tokens, budget=self.budget,
            summary=self.report(),
        )


def take_snapshot(root: Path, count_tokens: Callable[[str], int], budget: int, task: str = "",
                  may_read: Callable[[str], bool] | None = None) -> Snapshot:
    """Inline what matters most within `budget` tokens (header and listings included).

    `task`: the first prompt, when known (its files go first). `may_read(path)`: False for
    paths the read deny rules refuse (they are neither read nor listed)."""
    names = [rel for rel in list_files(root) if may_read is None or may_read(rel)]
    entries = [e for e in (classify(root, rel) for rel in names) if e]
    builder = _Builder(root, count_tokens, budget, task)
    return builder.build([e for e in entries if e.kind == "text"],
                         [e for e in entries if e.kind != "text"])


@dataclass
class _Piece:
    ranked: Ranked
    rendered: str
    tokens: int
    lines: str = ""  # set for an excerpt


class _Builder:
    """Fills the budget in rank order, then fits the listings and checks the whole."""

    def __init__(self, root: Path, count: Callable[[str], int], budget: int, task: str):
        self.root, self.count, self.budget, self.task = root, count, max(budget, 0), task
        self.header = f"# Repository snapshot ({root.name})\n"

    def build(self, text_files: list[FileEntry], others: list[FileEntry]) -> Snapshot:
        ranked = rank(self.root, text_files, self.task)
        list_room = max(self.budget // 8, 32)
        room = self.budget - self.count(self.header) - list_room
        chosen = self._fill(ranked, room, [])
        snap = self._assemble(ranked, chosen, others)
        if snap.tokens < self.budget:  # the listings took less than their room: use the rest
            chosen = self._fill(ranked, room + self.budget - snap.tokens, chosen)
            snap = self._assemble(ranked, chosen, others)
        while snap.tokens > self.budget and chosen:  # counts are not additive; make it fit
            chosen.pop()
            snap = self._assemble(ranked, chosen, others)
        if snap.tokens > self.budget:  # not even the listings fit: show nothing at all
            return Snapshot("", listed_only=others, left_out=text_files, budget=self.budget)
        return snap

    def _fill(self, ranked: list[Ranked], room: int, chosen: list[_Piece]) -> list[_Piece]:
        """Add files in rank order while they fit in `room` (what `chosen` holds counts)."""
        chosen = list(chosen)
        taken = {p.ranked.entry.path for p in chosen}
        used = sum(p.tokens for p in chosen)
        misses = 0
        for r in ranked:
            if r.entry.path in taken or misses >= _MISSES or room - used < 8:
                continue
            piece = self._piece(r, room - used)
            if piece is None:
                misses += 1
                continue
            chosen.append(piece)
            used += piece.tokens
            misses = 0
        return chosen

    def _piece(self, r: Ranked, room: int) -> _Piece | None:
        if r.entry.size // 12 > room:  # cannot fit whole: no need to read and count it
            return self._excerpt(r, room) if r.priority <= TASK else None
        body = self._read(r.entry)
        if body is None:
            return None
        rendered = render_file(r.entry.shown, body)
        n = self.count(rendered)
        if n <= room:
            return _Piece(r, rendered, n)
        return self._excerpt(r, room, body) if r.priority <= TASK else None

    def _excerpt(self, r: Ranked, room: int, body: str | None = None) -> _Piece | None:
        """A README or task-named file too big to inline: its named definitions, or its head."""
        body = body if body is not None else self._read(r.entry)
        if body is None:
            return None
        lines = body.splitlines()
        names = identifiers(self.task) if r.priority == TASK else []
        start, end = definition_span(lines, names) if names else (0, len(lines))
        end = min(end, start + 200)
        while end > start:
            shown = f"{start + 1}-{end}"
            text = "\n".join(lines[start:end]) + "\n"
            rendered = render_file(r.entry.shown, text, lines=f"{shown} of {len(lines)}")
            n = self.count(rendered)
            if n <= room:
                return _Piece(r, rendered, n, shown)
            end = start + (end - start) * room // max(n, 1) if n > room * 2 else end - 1
        return None

    def _read(self, entry: FileEntry) -> str | None:
        try:
            return read_inside(self.root, entry.path).decode("utf-8", errors="replace")
        except OSError:
            return None  # gone, or turned into a link since it was listed: not inlined

    def _assemble(self, ranked: list[Ranked], chosen: list[_Piece], others: list[FileEntry]
                  ) -> Snapshot:
        order = sorted(chosen, key=lambda p: (p.ranked.priority != README, p.ranked.recency,
                                              p.ranked.entry.path))
        taken = {p.ranked.entry.path for p in chosen}
        left = [r.entry for r in ranked if r.entry.path not in taken]
        parts = [self.header, *(p.rendered for p in order)]
        parts += listing(others, left, self.count, max(self.budget // 8, 32))
        text = "".join(parts)
        return Snapshot(text, [p.ranked.entry for p in order],
                        {p.ranked.entry.shown: p.lines for p in order if p.lines},
                        others, left, self.count(text), self.budget)


def render_file(shown: str, body: str, lines: str = "") -> str:
    """One file in the snapshot's framing; `shown` is already escaped (`FileEntry.shown`)."""
    if body and not body.endswith("\n"):
        body += "\n"
    span = f' lines="{lines}"' if lines else ""
    return f'<file path="{shown}"{span}>\n{body}</file>\n'
