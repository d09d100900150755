"""NullStore: the session store's interface, keeping nothing.

A session run without a store (tests, throwaway runs) records into this one, so the agent has
no "is there a store?" branches: writes vanish, reads find an empty session, and nothing can
be resumed or rewound because nothing was kept.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Any

from memory.store.db import SessionNotFound
from memory.store.records import Checkpoint, Event, Segment, SessionInfo, utc_now


class NullStore:
    """Accepts every write and forgets it; `durable` is False (SessionStore's is True)."""

    durable = False

    def create_session(self, repo_root: str | os.PathLike[str], model: str,
                       model_fingerprint: str, title: str | None = None,
                       parent_id: str | None = None) -> SessionInfo:
        now = utc_now()
        return SessionInfo(id=f"unsaved-{secrets.token_hex(4)}", repo_root=str(repo_root),
                           model=model, model_fingerprint=model_fingerprint, title=title,
                           status="active", parent_id=parent_id, turn_count=0, n_tokens=0,
                           created_at=now, updated_at=now)

    def fork(self, session_id: str, at_turn: int | None = None, call_id: str | None = None,
             title: str | None = None) -> SessionInfo:
        now = utc_now()
        return SessionInfo(id=f"unsaved-{secrets.token_hex(4)}", repo_root="", model="",
                           model_fingerprint="", title=title, status="active",
                           parent_id=session_id, turn_count=at_turn or 0, n_tokens=0,
                           created_at=now, updated_at=now, fork_turn=at_turn,
                           parent_call_id=call_id)

    def subagents(self, session_id: str) -> list[SessionInfo]:
        return []

    def get(self, session_id: str) -> SessionInfo:
        raise SessionNotFound(f"no session {session_id!r}: this agent keeps no sessions")

    def acquire_lock(self, session_id: str) -> bool:
        return False

    def release_lock(self, session_id: str) -> None:
        return None

    def set_status(self, session_id: str, status: str) -> None:
        return None

    def set_title(self, session_id: str, title: str | None) -> None:
        return None

    def append_event(self, session_id: str, turn: int, kind: str, payload: dict[str, Any]
                     ) -> int:
        return 0

    def events(self, session_id: str, since: int | None = None,
               include_superseded: bool = False) -> list[Event]:
        return []

    def append_tokens(self, session_id: str, turn: int, kind: str, ids: Sequence[int],
                      text: str | None = None) -> int:
        return 0

    def token_log(self, session_id: str) -> list[int]:
        return []

    def segments(self, session_id: str, with_ids: bool = True) -> list[Segment]:
        return []

    def truncate_to_turn(self, session_id: str, turn: int) -> int:
        return 0

    def add_checkpoint(self, session_id: str, turn: int, commit: str, ref: str | None = None
                       ) -> Checkpoint:
        return Checkpoint(id=0, session_id=session_id, turn=turn, commit=commit, ref=ref,
                          created_at=utc_now())

    def checkpoints(self, session_id: str) -> list[Checkpoint]:
        return []
