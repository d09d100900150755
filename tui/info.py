"""What the app shows about the running session before (and after) the agent says so."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AppInfo:
    """The model and session on screen; SessionStarted events replace it field by field."""

    model: str = ""
    repo_root: str = ""
    context_window: int = 0
    session_id: str = ""
