"""The saved sessions the picker shows: a summary per session, and the catalog contract."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent.handle import AgentHandle


@dataclass(frozen=True)
class SessionSummary:
    """What the picker shows of one saved session."""

    id: str
    title: str
    repo: str
    turns: int
    tokens: int  # resident context size when it was last saved
    updated_at: datetime
    summary: str = ""


class SessionCatalog(Protocol):
    """Saved sessions, as the session picker needs them (the CLI implements it over the store).

    Contract: every method is called from a worker thread, never the UI loop, and possibly from
    a different thread each time. Errors are raised as exceptions; the app shows their message.
    `open` and `fork` are only called after the app's current handle has been shut down.
    """

    def list(self) -> builtins.list[SessionSummary]:  # `list` is this method in here
        """All saved sessions, most recently updated first."""
        ...

    def delete(self, session_id: str) -> None:
        """Delete a session (never the one the app is showing)."""
        ...

    def fork(self, session_id: str) -> str:
        """Copy a session (sharing its KV pages); returns the new session's id."""
        ...

    def open(self, session_id: str) -> AgentHandle:
        """Resume a session: a running handle whose first event is SessionStarted."""
        ...
