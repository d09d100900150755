"""A session as plain JSON-able data, for `agent sessions export` and for tests."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memory.store.session_store import SessionStore

EXPORT_FORMAT = "resident-agent.session/1"


def export_session(store: SessionStore, session_id: str) -> dict[str, Any]:
    """The session, all its events (superseded ones flagged), its segments with their ids as
    lists, and its checkpoints; timestamps as ISO-8601 strings."""
    info = store.get(session_id)
    return {
        "format": EXPORT_FORMAT,
        "session": _plain(info),
        "events": [_plain(e) for e in store.events(info.id, include_superseded=True)],
        "segments": [_plain(s) for s in store.segments(info.id)],
        "checkpoints": [_plain(c) for c in store.checkpoints(info.id)],
    }


def _plain(record: Any) -> dict[str, Any]:
    out = dataclasses.asdict(record)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, tuple):
            out[key] = list(value)
    return out
