"""The session store: sessions, their event log, token log and checkpoints, in SQLite.

Files:
- db.py: the engine (WAL, synchronous=NORMAL, foreign keys, busy timeout) and the store's errors.
- schema.py: the tables as SQLAlchemy declarative classes, and the kinds and statuses.
- migrations.py: the ordered, named schema migrations and `migrate`.
- records.py: the frozen dataclasses handed out (SessionInfo, Event, Segment, Checkpoint).
- session_store.py: SessionStore, the single writer and all the reads.
- locks.py: one writer per session: the lock row, live or stale after a crash.
- null_store.py: NullStore, the same interface keeping nothing (a session without a store).
- queries.py: the store's SQL, small functions run inside SessionStore's transactions.
- export.py: a session as JSON-able data, written compactly, and imported into another store.
"""

from __future__ import annotations

from memory.store.db import (
    DB_FILENAME,
    AmbiguousSessionId,
    DataDirError,
    SchemaTooNew,
    SessionNotFound,
    StoreError,
)
from memory.store.locks import SessionLocked
from memory.store.null_store import NullStore
from memory.store.records import Checkpoint, Event, Segment, SessionInfo
from memory.store.schema import EVENT_KINDS, SEGMENT_KINDS, SESSION_STATUSES
from memory.store.session_store import SessionStore

__all__ = [
    "DB_FILENAME",
    "EVENT_KINDS",
    "SEGMENT_KINDS",
    "SESSION_STATUSES",
    "AmbiguousSessionId",
    "Checkpoint",
    "DataDirError",
    "Event",
    "NullStore",
    "SchemaTooNew",
    "Segment",
    "SessionInfo",
    "SessionLocked",
    "SessionNotFound",
    "SessionStore",
    "StoreError",
]
