"""What the app shows about the running session before (and after) the agent says so."""

from __future__ import annotations

from dataclasses import dataclass

from agent.events import SessionStarted


@dataclass(frozen=True)
class AppInfo:
    """The model and session on screen; each SessionStarted event replaces it."""

    model: str = ""
    repo_root: str = ""
    context_window: int = 0
    session_id: str = ""

    @classmethod
    def from_session(cls, event: SessionStarted) -> AppInfo:
        """What the agent announced when the session started."""
        return cls(event.model, event.repo_root, event.context_window, event.session_id)
