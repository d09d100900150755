"""What the user has sent versus what the agent has started: busy state and queued input."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Pending:
    """A prompt sent to the agent whose turn has not started yet."""

    text: str
    queued: bool  # sent while busy: shown as queued, not yet in the transcript


class TurnQueue:
    """Tracks turns from the front end's side (the agent keeps the real queue).

    A prompt sent while idle goes straight into the transcript; one sent while a turn runs (or
    another prompt waits) is queued. `started` matches a TurnStarted to the prompts it consumes,
    by text, because the agent may fold several queued prompts into one turn.
    """

    def __init__(self) -> None:
        self.running = False
        self._pending: list[Pending] = []

    @property
    def busy(self) -> bool:
        """A turn runs, or a prompt waits for one."""
        return self.running or bool(self._pending)

    @property
    def pending(self) -> list[Pending]:
        """A copy of the prompts not started yet, oldest first."""
        return list(self._pending)

    def submit(self, text: str) -> Pending:
        """Record a prompt sent to the agent; it is queued if the agent is busy."""
        item = Pending(text, queued=self.busy)
        self._pending.append(item)
        return item

    def started(self, prompt: str) -> list[Pending]:
        """A turn started on `prompt`: the pending prompts it consumed, oldest first."""
        self.running = True
        taken: list[Pending] = []
        kept: list[Pending] = []
        for item in self._pending:
            (taken if item.text in prompt else kept).append(item)
        self._pending = kept
        return taken

    def finished(self) -> None:
        """The running turn ended (queued prompts still wait for theirs)."""
        self.running = False

    def reset(self) -> None:
        """Forget everything: the session ended or was replaced."""
        self.running = False
        self._pending.clear()
