"""SessionStore: sessions, their event log, token log and checkpoints in `<data_dir>/sessions.db`.

One writer: every write takes the store's lock and runs in its own short BEGIN IMMEDIATE
transaction, so an acknowledged append is on disk (see db.py for what survives what) and a crash
loses at most the append in flight. Readers (this process or others) never block on it: WAL gives
each read transaction a consistent snapshot.

One process writes to a session at a time: `acquire_lock` takes the session (refusing with
SessionLocked while another live process holds it), `release_lock` gives it back; a lock left
by a process that died is stale, and its session, still `active`, reads as `crashed`.

Rewind keeps the event log append-only: `truncate_to_turn(t)` appends a `rewind` event, and every
earlier event of a turn after `t` reads as superseded from then on (computed, never updated in
place). The token log is the session's current context rather than its history, so its segments
after `t` are deleted, as are the checkpoints after `t`; the superseded events keep the record of
what was said.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, insert, select

from memory.store import locks, records
from memory.store import queries as q
from memory.store.db import (
    StoreError,
    Synchronous,
    make_engine,
    prepare_data_dir,
    translated_errors,
)
from memory.store.migrations import migrate
from memory.store.records import Checkpoint, Event, Segment, SessionInfo, utc_now
from memory.store.schema import (
    FORK,
    SEGMENT_KINDS,
    SESSION_STATUSES,
    STORE_EVENT_KINDS,
    TOKEN_BYTES,
    checkpoints,
    events,
    sessions,
    token_segments,
)

EVENT_KIND_RE = re.compile(r"[a-z][a-z0-9_]*")


class SessionStore:
    """The session database. Thread-safe; one instance per process should do all the writing.

    `path` is the database file; `applied_migrations` names the migrations this opening applied.

    Methods taking `session_id` want a full id; `get` also resolves a unique prefix. Unknown ids
    raise SessionNotFound; malformed arguments raise ValueError; other StoreErrors carry a one-line
    message that names the fix.
    """

    durable = True  # it keeps what it is given (NullStore does not)

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        create: bool = True,
        synchronous: Synchronous = "NORMAL",
    ) -> None:
        """Open (with `create`, making the directory if needed) and migrate the database."""
        self.path: Path = prepare_data_dir(data_dir, create)
        self._engine = make_engine(self.path, synchronous)
        self._lock = threading.Lock()
        self._closed = False
        try:
            with translated_errors(self.path):
                self.applied_migrations = migrate(self._engine, self.path)
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        create: bool = True,
        synchronous: Synchronous = "NORMAL",
    ) -> SessionStore:
        """Same as the constructor; reads better at call sites."""
        return cls(data_dir, create=create, synchronous=synchronous)

    def close(self) -> None:
        """Release the connections (SQLite checkpoints the WAL when the last one closes)."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions -------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        assert not self._closed, "the session store is closed"
        with translated_errors(self.path), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        assert not self._closed, "the session store is closed"
        with (
            self._lock,
            translated_errors(self.path),
            self._engine.connect().execution_options(sqlite_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    # ---- sessions -----------------------------------------------------------------------

    def create_session(
        self,
        repo_root: str | os.PathLike[str],
        model: str,
        model_fingerprint: str,
        title: str | None = None,
        parent_id: str | None = None,
        fork_turn: int | None = None,
        parent_call_id: str | None = None,
    ) -> SessionInfo:
        """Start an active session on `repo_root` (stored resolved) at turn 0, its lock held by
        this process (linked as a fork or sub-agent of `parent_id` when given)."""
        with self._write() as conn:
            if parent_id is not None:
                q.turn_count(conn, parent_id)
            session_id = q.insert_session(
                conn,
                repo_root=records.normalize_repo_root(repo_root),
                model=model,
                model_fingerprint=model_fingerprint,
                title=title,
                parent_id=parent_id,
                turn_count=0,
                fork_turn=fork_turn,
                parent_call_id=parent_call_id,
            )
            locks.acquire(conn, session_id, locks.Holder.me())
        return self.get(session_id)

    def get(self, session_id: str) -> SessionInfo:
        """The session with this id or unique id prefix."""
        with self._read() as conn:
            full_id = q.resolve(conn, session_id)
            return _with_crash(conn, q.session_info(conn, full_id))

    def latest(self, repo_root: str | os.PathLike[str] | None = None) -> SessionInfo | None:
        """The most recently active session (on `repo_root` if given), for `--continue`."""
        found = self.list_sessions(repo_root, limit=1)
        return found[0] if found else None

    def list_sessions(
        self,
        repo_root: str | os.PathLike[str] | None = None,
        limit: int = 50,
        include_subagents: bool = False,
    ) -> list[SessionInfo]:
        """Sessions by last activity, newest first, with their summaries; sub-agents (listed
        under their parent by `subagents`) only with `include_subagents`."""
        query = q.info_query().order_by(sessions.c.updated_at.desc(), sessions.c.id.desc())
        if not include_subagents:
            query = query.where(sessions.c.parent_call_id.is_(None))
        if repo_root is not None:
            query = query.where(sessions.c.repo_root == records.normalize_repo_root(repo_root))
        with self._read() as conn:
            rows = conn.execute(query.limit(limit)).all()
            return [_with_crash(conn, records.session_info(row)) for row in rows]

    def set_status(self, session_id: str, status: str) -> None:
        """Mark the session active, finished, interrupted or error."""
        if status not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {', '.join(SESSION_STATUSES)}, not {status!r}")
        self._update_session(session_id, status=status)

    def acquire_lock(self, session_id: str) -> bool:
        """Become the session's one writer; True when a crashed process's lock was replaced.

        Raises SessionLocked (a StoreError) while another live process holds it."""
        with self._write() as conn:
            q.turn_count(conn, session_id)
            return locks.acquire(conn, session_id, locks.Holder.me()) is not None

    def release_lock(self, session_id: str) -> None:
        """Stop being the session's writer (nothing happens if this process is not)."""
        with self._write() as conn:
            locks.release(conn, session_id, locks.Holder.me())

    def set_title(self, session_id: str, title: str | None) -> None:
        """Name the session (None clears the title)."""
        self._update_session(session_id, title=title)

    def delete(self, session_id: str) -> None:
        """Delete the session with its events, tokens, checkpoints and sub-agents; its other
        forks lose the link."""
        with self._write() as conn:
            mine = (sessions.c.parent_id == session_id, sessions.c.parent_call_id.is_not(None))
            conn.execute(delete(sessions).where(*mine))
            if conn.execute(delete(sessions).where(q.is_session(session_id))).rowcount == 0:
                raise q.not_found(session_id)

    def _update_session(self, session_id: str, **values: Any) -> None:
        with self._write() as conn:
            q.update_session(conn, session_id, updated_at=utc_now(), **values)

    # ---- the event log ------------------------------------------------------------------

    def append_event(self, session_id: str, turn: int, kind: str, payload: dict[str, Any]) -> int:
        """Append one event at `turn` (not before the session's current turn); return its id.

        The event is committed when this returns.
        """
        if not EVENT_KIND_RE.fullmatch(kind) or kind in STORE_EVENT_KINDS:
            raise ValueError(
                f"event kind {kind!r} must be a lowercase identifier other than "
                f"{', '.join(STORE_EVENT_KINDS)} (those are the store's own)"
            )
        text = records.dump_payload(payload)
        turn = _check_turn(turn)
        with self._write() as conn:
            q.advance_turn(conn, session_id, turn)
            return q.insert_event(conn, session_id, turn, kind, text)

    def events(
        self, session_id: str, since: int | None = None, include_superseded: bool = False
    ) -> list[Event]:
        """The session's events in order; `since` an event id gives only the later ones."""
        e = events.alias("e")
        superseded = q.superseded(e).label("superseded")
        query = select(e, superseded).where(e.c.session_id == session_id).order_by(e.c.id)
        if since is not None:
            query = query.where(e.c.id > since)
        if not include_superseded:
            query = query.where(~q.superseded(e))
        with self._read() as conn:
            q.turn_count(conn, session_id)
            return [records.event(row) for row in conn.execute(query)]

    # ---- the token log ------------------------------------------------------------------

    def append_tokens(
        self,
        session_id: str,
        turn: int,
        kind: str,
        ids: Sequence[int] | np.ndarray,
        text: str | None = None,
    ) -> int:
        """Append a segment of token ids at `turn`; return its index in the log."""
        if kind not in SEGMENT_KINDS:
            raise ValueError(f"segment kind must be one of {', '.join(SEGMENT_KINDS)}: {kind!r}")
        turn = _check_turn(turn)
        blob = records.encode_tokens(ids)
        with self._write() as conn:
            q.advance_turn(conn, session_id, turn)
            index = q.next_value(
                conn, token_segments.c.idx, token_segments.c.session_id == session_id
            )
            conn.execute(
                insert(token_segments).values(
                    session_id=session_id,
                    idx=index,
                    turn=turn,
                    kind=kind,
                    n_tokens=len(blob) // TOKEN_BYTES,
                    tokens=blob,
                    text=text,
                    created_at=utc_now(),
                )
            )
            return index

    def token_array(self, session_id: str) -> np.ndarray:
        """The whole token log as one read-only int32 array (no per-token Python work)."""
        query = (
            select(token_segments.c.tokens, token_segments.c.n_tokens)
            .where(token_segments.c.session_id == session_id)
            .order_by(token_segments.c.idx)
        )
        with self._read() as conn:
            q.turn_count(conn, session_id)
            rows = conn.execute(query).all()
        return records.decode_tokens([r.tokens for r in rows], sum(r.n_tokens for r in rows))

    def token_log(self, session_id: str) -> list[int]:
        """The whole token log, the concatenation of its segments, as a list of ids."""
        return self.token_array(session_id).tolist()

    def segments(self, session_id: str, with_ids: bool = True) -> list[Segment]:
        """The token log's segments in order (without their ids unless `with_ids`)."""
        columns = [c for c in token_segments.c if with_ids or c.name != "tokens"]
        query = (
            select(*columns)
            .where(token_segments.c.session_id == session_id)
            .order_by(token_segments.c.idx)
        )
        with self._read() as conn:
            q.turn_count(conn, session_id)
            return [records.segment(row, with_ids) for row in conn.execute(query)]

    # ---- rewind, fork, checkpoints ------------------------------------------------------

    def truncate_to_turn(self, session_id: str, turn: int) -> int:
        """Rewind to the end of `turn`: later events become superseded, later token segments
        and checkpoints are deleted. Returns the token log's new length.

        Rewinding to the current turn records nothing but still drops checkpoints taken for
        the turn that was about to start.
        """
        turn = _check_turn(turn)
        with self._write() as conn:
            current = q.turn_count(conn, session_id)
            if turn > current:
                raise StoreError(
                    f"cannot rewind session {session_id} to turn {turn}: it is at turn {current}"
                )
            if turn < current:
                q.record_rewind(conn, session_id, turn, current)
            for table in (token_segments, checkpoints):
                where = (table.c.session_id == session_id, table.c.turn > turn)
                conn.execute(delete(table).where(*where))
            return q.n_tokens(conn, session_id)

    def fork(
        self,
        session_id: str,
        at_turn: int | None = None,
        call_id: str | None = None,
        title: str | None = None,
    ) -> SessionInfo:
        """A new session (child of this one) holding this one's live log up to `at_turn`
        (a turn still running: what it has recorded so far). With `call_id` the child is a
        sub-agent, started by that tool call of this session; `title` names it (default: the
        parent's title)."""
        with self._write() as conn:
            parent = conn.execute(select(sessions).where(q.is_session(session_id))).first()
            if parent is None:
                raise q.not_found(session_id)
            turn = parent.turn_count if at_turn is None else at_turn
            if not 0 <= turn <= parent.turn_count:
                raise StoreError(
                    f"cannot fork session {session_id} at turn {turn}: "
                    f"its turns are 0..{parent.turn_count}"
                )
            child_id = q.insert_session(
                conn,
                repo_root=parent.repo_root,
                model=parent.model,
                model_fingerprint=parent.model_fingerprint,
                title=parent.title if title is None else title,
                parent_id=session_id,
                turn_count=turn,
                fork_turn=turn,
                parent_call_id=call_id,
            )
            q.copy_log(conn, session_id, child_id, turn)
            payload = records.dump_payload({"parent_id": session_id, "at_turn": turn})
            q.insert_event(conn, child_id, turn, FORK, payload)
        return self.get(child_id)

    def subagents(self, session_id: str) -> list[SessionInfo]:
        """The sub-agents this session started, oldest first."""
        query = (
            q.info_query()
            .where(sessions.c.parent_id == session_id, sessions.c.parent_call_id.is_not(None))
            .order_by(sessions.c.created_at, sessions.c.id)
        )
        with self._read() as conn:
            q.turn_count(conn, session_id)
            rows = conn.execute(query).all()
            return [_with_crash(conn, records.session_info(row)) for row in rows]

    def add_checkpoint(
        self, session_id: str, turn: int, commit: str, ref: str | None = None
    ) -> Checkpoint:
        """Record that the code at `turn` is git commit `commit` (kept alive by `ref`, if any).

        `turn` may run one ahead of the session: the agent checkpoints as a turn starts.
        """
        turn = _check_turn(turn)
        now = utc_now()
        values = dict(session_id=session_id, turn=turn, ref=ref, created_at=now)
        with self._write() as conn:
            q.turn_count(conn, session_id)
            done = conn.execute(insert(checkpoints).values(commit_sha=commit, **values))
        return Checkpoint(id=done.inserted_primary_key[0], commit=commit, **values)

    def checkpoints(self, session_id: str) -> list[Checkpoint]:
        """The session's checkpoints by turn (several per turn in the order recorded)."""
        query = (
            select(checkpoints)
            .where(checkpoints.c.session_id == session_id)
            .order_by(checkpoints.c.turn, checkpoints.c.id)
        )
        with self._read() as conn:
            q.turn_count(conn, session_id)
            return [records.checkpoint(row) for row in conn.execute(query)]

    # ---- whole sessions and the file ----------------------------------------------------

    def export(self, session_id: str) -> dict[str, Any]:
        """The session as JSON-able data: session, events (superseded ones flagged), segments
        as id lists, checkpoints."""
        from memory.store.export import export_session

        return export_session(self, session_id)

    def integrity_check(self) -> list[str]:
        """SQLite's integrity and foreign-key checks: the problems found ([] when sound)."""
        with self._read() as conn:
            problems = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
            problems = [p for p in problems if p != "ok"]
            for row in conn.exec_driver_sql("PRAGMA foreign_key_check"):
                problems.append(f"foreign key violation: {tuple(row)}")
        return problems


def _with_crash(conn: Connection, info: SessionInfo) -> SessionInfo:
    """An active session whose writer is gone was cut by a crash: it reads as `crashed`."""
    if info.status != "active":
        return info
    holder = locks.holder_of(conn, info.id)
    if holder is not None and holder.alive():
        return info
    return dataclasses.replace(info, status="crashed")


def _check_turn(turn: int) -> int:
    if isinstance(turn, bool) or not isinstance(turn, (int, np.integer)) or turn < 0:
        raise ValueError(f"turn must be a non-negative int, not {turn!r}")
    return int(turn)
