"""The engine's contract: pragmas, writers that lock up front, readers that never block them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from memory.store import DataDirError, SessionStore
from memory.store import db as store_db
from memory.store.db import make_engine


def test_pragmas_on_every_connection(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "x.db")
    with engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == store_db.BUSY_TIMEOUT_MS
    engine.dispose()
    engine = make_engine(tmp_path / "x.db", synchronous="FULL")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    engine.dispose()


def test_writes_take_the_lock_up_front_and_reads_do_not(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "x.db")
    other = sqlite3.connect(tmp_path / "x.db", timeout=0, isolation_level=None)
    with engine.connect().execution_options(sqlite_write=True) as conn, conn.begin():
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SELECT 1").scalar()
        other.execute("BEGIN IMMEDIATE")  # a reader's snapshot leaves writers free
        other.execute("COMMIT")
    other.close()
    engine.dispose()


def test_unwritable_data_dir_is_named_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes through permission bits, so the check itself is what can be tested everywhere.
    monkeypatch.setattr(store_db.os, "access", lambda path, mode: False)
    with pytest.raises(DataDirError) as e:
        SessionStore(tmp_path)
    assert str(e.value) == (
        f"data dir {tmp_path} is not writable; pass a writable --data-dir or set AGENT_DATA_DIR"
    )


def test_data_dir_names_are_paths_not_urls(tmp_path: Path) -> None:
    odd = tmp_path / "my data #1?mode=ro&x=é"
    with SessionStore(odd) as store:
        store.create_session(odd, "m", "fp")
    assert (odd / "sessions.db").is_file()
    with SessionStore(odd) as store:
        assert len(store.list_sessions()) == 1
