"""Schema migrations: an ordered list of small named functions, each recorded when applied.

Each function runs raw DDL frozen at the time it was written, so an old database replays exactly
the steps a new one went through. Never edit or reorder a released migration: append a new one.
`migrate` applies whatever is missing in one write transaction (SQLite DDL is transactional), so
an upgrade interrupted by a crash leaves the database at its old version, not half way.
A database carrying a migration this code does not know was written by a newer agent; it is
refused with SchemaTooNew rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Connection, Engine, insert

from memory.store.db import SchemaTooNew
from memory.store.schema import migrations_table

Migration = Callable[[Connection], None]


def _run(conn: Connection, *statements: str) -> None:
    for statement in statements:
        conn.exec_driver_sql(statement)


def m001_initial(conn: Connection) -> None:
    """Sessions, their event log and their token log."""
    _run(
        conn,
        """CREATE TABLE sessions (
            id VARCHAR NOT NULL PRIMARY KEY,
            repo_root TEXT NOT NULL,
            model TEXT NOT NULL,
            model_fingerprint TEXT NOT NULL,
            title TEXT,
            status VARCHAR NOT NULL,
            parent_id VARCHAR REFERENCES sessions (id) ON DELETE SET NULL,
            turn_count INTEGER NOT NULL,
            created_at DATETIME NOT NULL,
            updated_at DATETIME NOT NULL
        )""",
        "CREATE INDEX ix_sessions_updated_at ON sessions (updated_at)",
        "CREATE INDEX ix_sessions_repo_root_updated_at ON sessions (repo_root, updated_at)",
        """CREATE TABLE events (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
            session_id VARCHAR NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            turn INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            payload TEXT NOT NULL,
            created_at DATETIME NOT NULL,
            UNIQUE (session_id, turn, seq)
        )""",
        """CREATE TABLE token_segments (
            session_id VARCHAR NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            turn INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            n_tokens INTEGER NOT NULL,
            tokens BLOB NOT NULL,
            text TEXT,
            created_at DATETIME NOT NULL,
            PRIMARY KEY (session_id, idx)
        )""",
        "CREATE INDEX ix_token_segments_session_id_turn ON token_segments (session_id, turn)",
    )


def m002_checkpoints(conn: Connection) -> None:
    """Git checkpoints of the code at turn ends, for rewind."""
    _run(
        conn,
        """CREATE TABLE checkpoints (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
            session_id VARCHAR NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            turn INTEGER NOT NULL,
            commit_sha VARCHAR NOT NULL,
            ref TEXT,
            created_at DATETIME NOT NULL
        )""",
        "CREATE INDEX ix_checkpoints_session_id_turn ON checkpoints (session_id, turn)",
    )


def m003_lookup_indexes(conn: Connection) -> None:
    """Indexes for finding rewinds (superseded events) and a deleted parent's forks."""
    _run(
        conn,
        "CREATE INDEX ix_events_session_id_kind_id ON events (session_id, kind, id)",
        "CREATE INDEX ix_sessions_parent_id ON sessions (parent_id)",
    )


def m004_session_locks(conn: Connection) -> None:
    """One writer per session: the process holding it, released on exit, stale after a crash."""
    _run(
        conn,
        """CREATE TABLE session_locks (
            session_id VARCHAR NOT NULL PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started TEXT NOT NULL,
            acquired_at DATETIME NOT NULL
        )""",
    )


def m005_subagent_links(conn: Connection) -> None:
    """Sub-agents: the parent's turn a session was forked at and the parent's tool call that
    started it (NULL for sessions that are not sub-agents)."""
    _run(
        conn,
        "ALTER TABLE sessions ADD COLUMN fork_turn INTEGER",
        "ALTER TABLE sessions ADD COLUMN parent_call_id VARCHAR",
    )


MIGRATIONS: list[Migration] = [
    m001_initial,
    m002_checkpoints,
    m003_lookup_indexes,
    m004_session_locks,
    m005_subagent_links,
]


def applied_migrations(conn: Connection) -> list[str]:
    """Names of the migrations recorded in the database, oldest first ([] for a new file)."""
    exists = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).first()
    if exists is None:
        return []
    rows = conn.exec_driver_sql("SELECT name FROM _migrations ORDER BY rowid")
    return [name for (name,) in rows]


def pending_migrations(conn: Connection, db_path: Path) -> list[Migration]:
    """The migrations still to apply; raises SchemaTooNew if the database is ahead of this code."""
    applied = applied_migrations(conn)
    known = {m.__name__ for m in MIGRATIONS}
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise SchemaTooNew(
            f"{db_path} was written by a newer agent (unknown schema migrations: "
            f"{', '.join(unknown)}); upgrade the agent, or pass another --data-dir"
        )
    return [m for m in MIGRATIONS if m.__name__ not in applied]


def migrate(engine: Engine, db_path: Path) -> list[str]:
    """Bring the database up to date; return the names of the migrations applied now."""
    # Look first under a shared lock, so opening an up-to-date store never waits for a writer.
    with engine.connect() as conn, conn.begin():
        if not pending_migrations(conn, db_path):
            return []
    with engine.connect().execution_options(sqlite_write=True) as conn, conn.begin():
        # Another process may have migrated between the two transactions: look again.
        pending = pending_migrations(conn, db_path)
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS _migrations "
            "(name VARCHAR NOT NULL PRIMARY KEY, applied_at DATETIME NOT NULL)"
        )
        for migration in pending:
            migration(conn)
            conn.execute(
                insert(migrations_table).values(
                    name=migration.__name__, applied_at=datetime.now(timezone.utc)
                )
            )
    return [m.__name__ for m in pending]
