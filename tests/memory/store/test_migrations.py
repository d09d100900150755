"""Migrations (fresh, from an older file, refusing a newer one) and the data directory's errors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from memory.store import DataDirError, SchemaTooNew, SessionStore, StoreError
from memory.store.migrations import MIGRATIONS
from memory.store.schema import Base

ALL = [m.__name__ for m in MIGRATIONS]

# The database as the first release wrote it, by hand: only m001_initial applied.
V1_SCHEMA = """
CREATE TABLE _migrations (name VARCHAR NOT NULL PRIMARY KEY, applied_at DATETIME NOT NULL);
INSERT INTO _migrations VALUES ('m001_initial', '2026-01-02 03:04:05.000000');
CREATE TABLE sessions (
    id VARCHAR NOT NULL PRIMARY KEY, repo_root TEXT NOT NULL, model TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL, title TEXT, status VARCHAR NOT NULL,
    parent_id VARCHAR REFERENCES sessions (id) ON DELETE SET NULL,
    turn_count INTEGER NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
CREATE INDEX ix_sessions_updated_at ON sessions (updated_at);
CREATE INDEX ix_sessions_repo_root_updated_at ON sessions (repo_root, updated_at);
CREATE TABLE events (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_id VARCHAR NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn INTEGER NOT NULL, seq INTEGER NOT NULL, kind VARCHAR NOT NULL, payload TEXT NOT NULL,
    created_at DATETIME NOT NULL, UNIQUE (session_id, turn, seq));
CREATE TABLE token_segments (
    session_id VARCHAR NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, turn INTEGER NOT NULL, kind VARCHAR NOT NULL, n_tokens INTEGER NOT NULL,
    tokens BLOB NOT NULL, text TEXT, created_at DATETIME NOT NULL,
    PRIMARY KEY (session_id, idx));
CREATE INDEX ix_token_segments_session_id_turn ON token_segments (session_id, turn);
INSERT INTO sessions VALUES ('20260102-030405-ab12', '/repo', 'smollm2', 'fp', 'old one',
    'finished', NULL, 1, '2026-01-02 03:04:05.000000', '2026-01-02 03:05:00.000000');
INSERT INTO events (session_id, turn, seq, kind, payload, created_at) VALUES
    ('20260102-030405-ab12', 1, 0, 'user_message', '{"text":"hi"}', '2026-01-02 03:04:06.000000');
INSERT INTO token_segments VALUES ('20260102-030405-ab12', 0, 1, 'user',
    3, X'010000000200000003000000', 'hi', '2026-01-02 03:04:06.000000');
"""


def _shape(db_url: str) -> dict[str, object]:
    """Everything about a schema that matters: columns, keys, indexes, foreign keys."""
    engine = create_engine(db_url)
    insp = inspect(engine)
    con = engine.connect()
    shape: dict[str, object] = {}
    for table in sorted(insp.get_table_names()):
        shape[table] = (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
            insp.get_pk_constraint(table)["constrained_columns"],
            sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)),
            sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            # SQLite's own view, which sees ON DELETE on column-level REFERENCES too.
            sorted(tuple(r[2:]) for r in con.exec_driver_sql(f"PRAGMA foreign_key_list({table})")),
        )
    con.close()
    engine.dispose()
    return shape


def test_fresh_database_gets_every_migration_and_matches_the_declarative_schema(
    tmp_path: Path,
) -> None:
    store = SessionStore(tmp_path)
    assert store.applied_migrations == ALL
    store.close()
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == ALL
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reference = tmp_path / "reference.db"
    engine = create_engine(f"sqlite:///{reference}")
    Base.metadata.create_all(engine)
    engine.dispose()
    migrated = _shape(f"sqlite:///{tmp_path / 'sessions.db'}")
    assert migrated == _shape(f"sqlite:///{reference}")


def test_reopening_applies_nothing(tmp_path: Path) -> None:
    SessionStore(tmp_path).close()
    store = SessionStore(tmp_path)
    assert store.applied_migrations == []
    store.close()


def test_older_database_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        db.executescript(V1_SCHEMA)
    with SessionStore(tmp_path) as store:
        assert store.applied_migrations == ALL[1:]
        info = store.get("20260102")
        assert (info.title, info.status) == ("old one", "finished")
        assert (info.turn_count, info.n_tokens) == (1, 3)
        assert info.updated_at.isoformat() == "2026-01-02T03:05:00+00:00"
        assert store.token_log(info.id) == [1, 2, 3]
        assert store.events(info.id)[0].payload == {"text": "hi"}
        store.add_checkpoint(info.id, 1, "sha")  # a table the old file did not have
        assert store.truncate_to_turn(info.id, 0) == 0
        assert store.integrity_check() == []


def test_newer_database_is_refused_in_one_line(tmp_path: Path) -> None:
    SessionStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        db.execute("INSERT INTO _migrations VALUES ('m099_from_the_future', '2027-01-01 00:00:00')")
    with pytest.raises(SchemaTooNew) as e:
        SessionStore(tmp_path)
    message = str(e.value)
    assert "\n" not in message and "m099_from_the_future" in message
    assert "upgrade the agent" in message and "--data-dir" in message


def test_missing_data_dir_is_created_or_refused(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    with pytest.raises(DataDirError, match="does not exist.*--data-dir"):
        SessionStore(target, create=False)
    assert not target.exists()
    SessionStore(target).close()
    assert (target / "sessions.db").is_file()


def test_data_dir_that_cannot_be_a_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataDirError, match="not a directory.*--data-dir") as e:
        SessionStore(blocker)
    assert "\n" not in str(e.value)
    with pytest.raises(DataDirError, match="cannot create data dir.*AGENT_DATA_DIR"):
        SessionStore(blocker / "below")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_data_dir(tmp_path: Path) -> None:
    SessionStore(tmp_path / "data").close()
    (tmp_path / "data").chmod(0o555)
    try:
        with pytest.raises(DataDirError, match="not writable.*--data-dir"):
            SessionStore(tmp_path / "data")
    finally:
        (tmp_path / "data").chmod(0o755)


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "sessions.db").write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(StoreError, match="not a readable session database.*move it aside") as e:
        SessionStore(tmp_path)
    assert "\n" not in str(e.value)
