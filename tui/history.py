"""Prompt history: up and down walk through earlier prompts, keeping the unsent draft."""

from __future__ import annotations


class PromptHistory:
    """Earlier prompts, oldest first, with a cursor that `older`/`newer` move.

    Walking back from the newest position remembers the text being typed (the draft), and
    walking forward past the newest entry gives it back.
    """

    def __init__(self, entries: list[str] | None = None, limit: int = 500) -> None:
        self._entries: list[str] = list(entries or [])[-limit:]
        self._limit = limit
        self._cursor = len(self._entries)
        self._draft = ""

    @property
    def entries(self) -> list[str]:
        """A copy of the entries, oldest first."""
        return list(self._entries)

    def add(self, text: str) -> None:
        """Record a submitted prompt (consecutive duplicates once) and reset the cursor."""
        if text.strip() and (not self._entries or self._entries[-1] != text):
            self._entries.append(text)
            del self._entries[: -self._limit]
        self._cursor = len(self._entries)
        self._draft = ""

    def older(self, current: str) -> str | None:
        """The entry before the cursor, or None at the oldest."""
        if self._cursor == 0:
            return None
        if self._cursor == len(self._entries):
            self._draft = current
        self._cursor -= 1
        return self._entries[self._cursor]

    def newer(self) -> str | None:
        """The entry after the cursor, the draft past the newest, or None if already there."""
        if self._cursor >= len(self._entries):
            return None
        self._cursor += 1
        if self._cursor == len(self._entries):
            return self._draft
        return self._entries[self._cursor]
