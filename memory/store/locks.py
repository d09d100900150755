"""One writer per session: a row naming the process that holds it.

A lock is live while its process runs (same host, same pid, same start time: a pid reused by
another program does not count); otherwise it is stale and the next taker replaces it. A lock
held on another host is treated as live, since nothing here can tell whether that process runs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select

from memory.store.db import StoreError
from memory.store.records import utc_now
from memory.store.schema import session_locks


class SessionLocked(StoreError):
    """Another live process is writing to this session."""


@dataclass(frozen=True)
class Holder:
    """A process that can hold a session lock."""

    host: str
    pid: int
    started: str

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()))

    def alive(self) -> bool:
        """Whether this process still runs (always True for another host's)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            pass
        return process_start(self.pid) == self.started


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def holder_of(conn: Connection, session_id: str) -> Holder | None:
    row = conn.execute(select(session_locks).where(session_locks.c.session_id == session_id)
                       ).first()
    return None if row is None else Holder(row.host, row.pid, row.started)


def acquire(conn: Connection, session_id: str, me: Holder) -> Holder | None:
    """Take the lock; returns the stale holder it replaced (None if it was free).

    Raises SessionLocked when a live process other than `me` holds it."""
    held = holder_of(conn, session_id)
    if held is not None and held != me and held.alive():
        raise SessionLocked(
            f"session {session_id} is open in another agent (pid {held.pid} on {held.host}); "
            "close that one first, or start a new session"
        )
    conn.execute(delete(session_locks).where(session_locks.c.session_id == session_id))
    conn.execute(insert(session_locks).values(session_id=session_id, host=me.host, pid=me.pid,
                                              started=me.started, acquired_at=utc_now()))
    return held if held != me else None


def release(conn: Connection, session_id: str, me: Holder) -> None:
    """Drop the lock if `me` holds it."""
    if holder_of(conn, session_id) == me:
        conn.execute(delete(session_locks).where(session_locks.c.session_id == session_id))
