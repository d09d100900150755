"""The session store's tables, as SQLAlchemy 2 declarative classes.

These classes describe the schema the migrations build; they are not the way it is built (the
migrations carry their own DDL, frozen when each was written). `tests/memory/store` checks that a
freshly migrated database matches these classes column for column.

Token ids are stored per segment as a BLOB of little-endian int32, 4 bytes a token: a 1M-token log
is 4 MB and reads back with one `numpy.frombuffer`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal, cast

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# crashed: the process died with the session active (found when its lock turned out stale).
SessionStatus = Literal["active", "finished", "interrupted", "error", "crashed"]
SESSION_STATUSES: tuple[str, ...] = ("active", "finished", "interrupted", "error", "crashed")

SegmentKind = Literal["system", "repo", "user", "assistant", "tool", "note"]
SEGMENT_KINDS: tuple[str, ...] = ("system", "repo", "user", "assistant", "tool", "note")

# Event kinds the agent writes: its events' stream-json names (agent/events.py RECORDED). The
# store accepts any lowercase identifier.
EVENT_KINDS: tuple[str, ...] = (
    "turn_started",
    "message_added",
    "tool_started",
    "tool_finished",
    "approval_requested",
    "approval_given",
    "note",
    "turn_finished",
    "error",
)
# Written only by the store itself: `rewind` gives events their superseded state, `fork` records
# where a forked session came from.
REWIND = "rewind"
FORK = "fork"
STORE_EVENT_KINDS: tuple[str, ...] = (REWIND, FORK)

TOKEN_DTYPE = "<i4"  # numpy dtype of the token BLOBs: little-endian int32
TOKEN_BYTES = 4


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored naive (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert value.tzinfo is not None, "store timestamps must be timezone-aware"
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class SessionRow(Base):
    """One session: a conversation on one repository with one model."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    repo_root: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    model_fingerprint: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id", ondelete="SET NULL"))
    # The highest turn recorded so far; turn 0 is the preamble (system prompt, repository).
    turn_count: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A fork: the parent's turn its log was copied through. A sub-agent: also the parent's
    # tool call that started it (NULL for every other session).
    fork_turn: Mapped[int | None]
    parent_call_id: Mapped[str | None] = mapped_column(String)

    __table_args__ = (
        Index("ix_sessions_updated_at", "updated_at"),
        Index("ix_sessions_repo_root_updated_at", "repo_root", "updated_at"),
        Index("ix_sessions_parent_id", "parent_id"),
    )


class EventRow(Base):
    """One entry of a session's append-only event log (payload is JSON text)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int]
    seq: Mapped[int]  # order within the turn, from 0
    kind: Mapped[str] = mapped_column(String)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("session_id", "turn", "seq"),
        Index("ix_events_session_id_kind_id", "session_id", "kind", "id"),
        {"sqlite_autoincrement": True},
    )


class TokenSegmentRow(Base):
    """A run of token ids of one kind within one turn; segments concatenate to the token log."""

    __tablename__ = "token_segments"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(primary_key=True)  # position in the log, from 0
    turn: Mapped[int]
    kind: Mapped[str] = mapped_column(String)
    n_tokens: Mapped[int]
    tokens: Mapped[bytes] = mapped_column(LargeBinary)
    text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_token_segments_session_id_turn", "session_id", "turn"),)


class CheckpointRow(Base):
    """The state of the code at the end of a turn, as a git commit (and optionally a ref)."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    turn: Mapped[int]
    commit_sha: Mapped[str] = mapped_column(String)
    ref: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_checkpoints_session_id_turn", "session_id", "turn"),
        {"sqlite_autoincrement": True},
    )


class SessionLockRow(Base):
    """The one process writing to a session now; stale when that process is gone."""

    __tablename__ = "session_locks"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int]
    started: Mapped[str] = mapped_column(Text)  # the holder's start time, against pid reuse
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MigrationRow(Base):
    """One applied migration, by name (the schema version is the set of these)."""

    __tablename__ = "_migrations"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime)


# The Core tables, which the store queries directly (no ORM unit of work on the hot path).
sessions = cast(Table, SessionRow.__table__)
events = cast(Table, EventRow.__table__)
token_segments = cast(Table, TokenSegmentRow.__table__)
checkpoints = cast(Table, CheckpointRow.__table__)
session_locks = cast(Table, SessionLockRow.__table__)
migrations_table = cast(Table, MigrationRow.__table__)
