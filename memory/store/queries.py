"""The session store's SQL, as small functions each run inside the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Exists,
    Select,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)

from memory.store import records
from memory.store.db import AmbiguousSessionId, SessionNotFound, StoreError
from memory.store.records import utc_now
from memory.store.schema import REWIND, checkpoints, events, sessions, token_segments

LIST_HINT = "`agent sessions list` shows the ids"


def is_session(session_id: str) -> ColumnElement[bool]:
    return sessions.c.id == session_id


def not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"no session {session_id!r}; {LIST_HINT}")


def turn_count(conn: Connection, session_id: str) -> int:
    """The session's current turn; raises SessionNotFound if there is no such session."""
    found = conn.execute(select(sessions.c.turn_count).where(is_session(session_id))).scalar()
    if found is None:
        raise not_found(session_id)
    return found


def advance_turn(conn: Connection, session_id: str, turn: int) -> None:
    """Move the session to `turn` and mark it active now; the past is closed to appends."""
    current = turn_count(conn, session_id)
    if turn < current:
        raise StoreError(
            f"session {session_id} is at turn {current}, so turn {turn} is closed: the log is "
            "append-only (rewind with truncate_to_turn first)"
        )
    set_turn(conn, session_id, turn)


def set_turn(conn: Connection, session_id: str, turn: int) -> None:
    values = dict(turn_count=turn, updated_at=utc_now())
    conn.execute(update(sessions).where(is_session(session_id)).values(**values))


def next_value(conn: Connection, column: Any, *where: Any) -> int:
    """One past the largest `column` among the rows matching `where` (0 if none)."""
    return conn.execute(select(func.coalesce(func.max(column) + 1, 0)).where(*where)).scalar_one()


def insert_event(conn: Connection, session_id: str, turn: int, kind: str, payload: str) -> int:
    seq = next_value(conn, events.c.seq, events.c.session_id == session_id, events.c.turn == turn)
    values = dict(session_id=session_id, turn=turn, seq=seq, kind=kind, payload=payload)
    done = conn.execute(insert(events).values(created_at=utc_now(), **values))
    return done.inserted_primary_key[0]


def insert_session(conn: Connection, **values: Any) -> str:
    now = utc_now()
    session_id = records.new_session_id(now)
    # Ids are unique to the second only by their random tail; we hold the write lock, so
    # checking first is race-free.
    while conn.execute(select(sessions.c.id).where(is_session(session_id))).first() is not None:
        session_id = records.new_session_id(now)
    conn.execute(
        insert(sessions).values(
            id=session_id, status="active", created_at=now, updated_at=now, **values
        )
    )
    return session_id


def session_info(conn: Connection, session_id: str) -> records.SessionInfo:
    return records.session_info(conn.execute(info_query().where(is_session(session_id))).one())


def update_session(conn: Connection, session_id: str, **values: Any) -> None:
    done = conn.execute(update(sessions).where(is_session(session_id)).values(**values))
    if done.rowcount == 0:
        raise not_found(session_id)


def info_query() -> Select[Any]:
    n_tokens = (
        select(func.coalesce(func.sum(token_segments.c.n_tokens), 0))
        .where(token_segments.c.session_id == sessions.c.id)
        .scalar_subquery()
    )
    return select(*sessions.c, n_tokens.label("n_tokens"))


def resolve(conn: Connection, prefix: str) -> str:
    """The one session id equal to or starting with `prefix`."""
    prefix = prefix.strip()
    if conn.execute(select(sessions.c.id).where(is_session(prefix))).first() is not None:
        return prefix
    matching = select(sessions.c.id).where(sessions.c.id.startswith(prefix, autoescape=True))
    found = [] if not prefix else list(conn.execute(matching.limit(4)).scalars())
    if not found:
        raise SessionNotFound(f"no session id starts with {prefix!r}; {LIST_HINT}")
    if len(found) > 1:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise AmbiguousSessionId(
            f"session id {prefix!r} is ambiguous ({shown}); give more of the id"
        )
    return found[0]


def superseded(e: Any) -> Exists:
    """True for an event that a later rewind, to an earlier turn, went back over."""
    r = events.alias("r")
    return exists().where(
        r.c.session_id == e.c.session_id,
        r.c.kind == REWIND,
        r.c.id > e.c.id,
        r.c.turn < e.c.turn,
    )


def n_tokens(conn: Connection, session_id: str) -> int:
    where = token_segments.c.session_id == session_id
    return conn.execute(
        select(func.coalesce(func.sum(token_segments.c.n_tokens), 0)).where(where)
    ).scalar_one()


def record_rewind(conn: Connection, session_id: str, turn: int, current: int) -> None:
    set_turn(conn, session_id, turn)
    payload = records.dump_payload({"to_turn": turn, "from_turn": current})
    insert_event(conn, session_id, turn, REWIND, payload)


def copy_log(conn: Connection, source: str, target: str, turn: int) -> None:
    """Copy the live events, the token segments and the checkpoints up to `turn`, in SQL."""
    e = events.alias("e")
    copied = ["turn", "seq", "kind", "payload", "created_at"]
    live = (
        select(literal(target), *(e.c[name] for name in copied))
        .where(e.c.session_id == source, e.c.turn <= turn, ~superseded(e))
        .order_by(e.c.id)
    )
    conn.execute(insert(events).from_select(["session_id", *copied], live))
    for table, order in ((token_segments, token_segments.c.idx), (checkpoints, checkpoints.c.id)):
        names = [c.name for c in table.c if c.name not in ("session_id", "id")]
        rows = (
            select(literal(target), *(table.c[n] for n in names))
            .where(table.c.session_id == source, table.c.turn <= turn)
            .order_by(order)
        )
        conn.execute(insert(table).from_select(["session_id", *names], rows))
