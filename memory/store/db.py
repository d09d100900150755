"""The SQLite engine behind the session store, its pragmas, and the store's exceptions.

Durability: WAL with `synchronous=NORMAL`. A commit appends to the WAL with write(2) and returns;
the WAL is fsynced at checkpoints. A killed process (`kill -9`, a crash) cannot lose what the OS
already holds, so every acknowledged commit survives it and the file is never corrupt. Only a power
loss or OS crash can roll back the last few commits, to a consistent earlier state. FULL would fsync
on every commit (milliseconds per event on ordinary disks) to close that window too; the store
offers it (`synchronous="FULL"`) but does not need it for the guarantee it promises.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

DB_FILENAME = "sessions.db"
BUSY_TIMEOUT_MS = 10_000
FIX_DATA_DIR = "pass a writable --data-dir or set AGENT_DATA_DIR"

Synchronous = Literal["NORMAL", "FULL"]


class StoreError(Exception):
    """Base of every error the session store raises; each message is one line naming the fix."""


class DataDirError(StoreError):
    """The data directory or its database cannot be created, opened or written."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer version of the agent than this one."""


class SessionNotFound(StoreError):
    """No session has this id (or id prefix)."""


class AmbiguousSessionId(StoreError):
    """An id prefix matches more than one session."""


def prepare_data_dir(data_dir: str | os.PathLike[str], create: bool) -> Path:
    """Check (and with `create`, make) the data directory; return the database path in it."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        if not create:
            raise DataDirError(f"data dir {path} does not exist; create it or {FIX_DATA_DIR}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise DataDirError(f"cannot create data dir {path} ({reason}); {FIX_DATA_DIR}") from e
    if not path.is_dir():
        raise DataDirError(f"data dir {path} is not a directory; {FIX_DATA_DIR}")
    # WAL needs to create sessions.db-wal and -shm next to the database, even to read it.
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not writable; {FIX_DATA_DIR}")
    return path / DB_FILENAME


def make_engine(db_path: Path, synchronous: Synchronous = "NORMAL") -> Engine:
    """An engine on `db_path` with WAL, foreign keys, a busy timeout and explicit transactions.

    Transactions begin with a plain (deferred) BEGIN, or with BEGIN IMMEDIATE on connections
    carrying the execution option `sqlite_write=True`: a writer takes the write lock up front, so a
    read-then-write transaction never fails halfway on a lock held by another process.
    """
    assert synchronous in ("NORMAL", "FULL"), f"synchronous is NORMAL or FULL, not {synchronous}"
    engine = create_engine(
        URL.create("sqlite", database=str(db_path)),  # a URL string would choke on '?' or '#'
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=4,
        # Connections move between threads only through the pool, one user at a time.
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Take transaction control away from pysqlite, which would otherwise BEGIN lazily and
        # only before DML; SQLAlchemy's "begin" hook below emits BEGIN itself.
        dbapi_conn.isolation_level = None
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={synchronous}",
            "foreign_keys=ON",
            f"busy_timeout={BUSY_TIMEOUT_MS}",
        ):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("sqlite_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def translated_errors(db_path: Path) -> Iterator[None]:
    """Turn SQLite's errors about the file itself into one-line StoreErrors that name the fix."""
    try:
        yield
    except DBAPIError as e:
        translated = _translate(e, db_path)
        if translated is None:
            raise
        raise translated from e


def _translate(e: DBAPIError, db_path: Path) -> StoreError | None:
    message = str(e.orig) if e.orig is not None else str(e)
    lowered = message.lower()
    if "readonly" in lowered or "unable to open" in lowered or "disk i/o" in lowered:
        return DataDirError(f"cannot write {db_path} ({message}); {FIX_DATA_DIR}")
    if "not a database" in lowered or "malformed" in lowered:
        return StoreError(
            f"{db_path} is not a readable session database ({message}); "
            "move it aside to start fresh, or pass another --data-dir"
        )
    if "database or disk is full" in lowered:
        return StoreError(f"disk full writing {db_path}; free some space and retry")
    if "locked" in lowered or "busy" in lowered:
        return StoreError(
            f"{db_path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s by another process; "
            "retry, or stop the other agent using this --data-dir"
        )
    return None
