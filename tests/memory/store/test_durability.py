"""The store across processes: `kill -9` mid-write, readers beside a writer, two writers."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from memory.store import SessionStore

REPO = Path(__file__).resolve().parents[3]
TOKENS = 40  # per segment; segment i holds range(i, i + TOKENS)

# Appends event i and its token segment, then acknowledges both on stdout (after the commits).
WRITER = r"""
import sys
import time
from memory.store import SessionStore
data_dir, sid, start, count, tokens = sys.argv[1:3] + [int(a) for a in sys.argv[3:6]]
store = SessionStore(data_dir)
for i in range(start, start + count):
    turn = i // 10
    event_id = store.append_event(sid, turn, "tool_result", {"i": i, "output": "x" * 300})
    store.append_tokens(sid, turn, "tool", list(range(i, i + tokens)))
    sys.stdout.write(f"{event_id} {i}\n")
    sys.stdout.flush()
store.close()
"""


def spawn_writer(data_dir: Path, sid: str, start: int, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", WRITER, str(data_dir), sid, str(start), str(count), str(TOKENS)]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def acks(lines: list[str]) -> dict[int, int]:
    """Acknowledged appends: event id -> i."""
    return {int(a): int(b) for a, b in (line.split() for line in lines)}


def check_log(store: SessionStore, sid: str, acked: dict[int, int]) -> tuple[int, int]:
    """Everything acknowledged is there and well formed; returns (events, segments) stored."""
    events = {e.id: e.payload["i"] for e in store.events(sid)}
    assert all(events.get(eid) == i for eid, i in acked.items()), "an acknowledged event is lost"
    segments = store.segments(sid)
    by_first = {s.ids[0]: s.ids for s in segments}
    assert all(by_first.get(i) == tuple(range(i, i + TOKENS)) for i in acked.values())
    assert len(store.token_log(sid)) == TOKENS * len(segments)
    assert sid in [s.id for s in store.list_sessions()]
    return len(events), len(segments)


def test_kill_9_loses_at_most_the_append_in_flight(tmp_path: Path) -> None:
    rng = random.Random(1234)
    with SessionStore(tmp_path) as store:
        sid = store.create_session(tmp_path, "m", "fp").id
    acked: dict[int, int] = {}
    stored = (0, 0)  # events, segments
    for _ in range(3):
        child = spawn_writer(tmp_path, sid, stored[0], 100_000)
        lines = [child.stdout.readline() for _ in range(rng.randint(50, 250))]
        time.sleep(rng.uniform(0, 0.005))  # not in step with the child's prints
        os.kill(child.pid, signal.SIGKILL)
        lines += child.stdout.read().splitlines()  # printed before the kill: acknowledged too
        child.stdout.close()
        assert child.wait() == -signal.SIGKILL
        round_acks = acks(lines)
        acked |= round_acks
        with sqlite3.connect(tmp_path / "sessions.db") as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        with SessionStore(tmp_path) as store:
            assert store.integrity_check() == []
            before, stored = stored, check_log(store, sid, acked)
        # Writes are serial, so beyond the acknowledged ones at most one append got in: an
        # event whose token segment was still being written.
        new_events, new_segments = stored[0] - before[0], stored[1] - before[1]
        assert len(round_acks) <= new_segments <= new_events <= len(round_acks) + 1


def test_readers_see_consistent_snapshots_while_another_process_writes(tmp_path: Path) -> None:
    with SessionStore(tmp_path) as store:
        sid = store.create_session(tmp_path, "m", "fp").id
        writer = spawn_writer(tmp_path, sid, 0, 300)
        reads, last = 0, (0, 0)
        while writer.poll() is None or reads == 0:
            n_events = len(store.events(sid))
            log = store.token_log(sid)
            n = len(log) // TOKENS
            # Segments are appended in order: the log is always a whole prefix of the expected.
            assert log == [t for i in range(n) for t in range(i, i + TOKENS)]
            assert (n_events, n) >= last
            last, reads = (n_events, n), reads + 1
        lines = writer.stdout.read().splitlines()
        writer.stdout.close()
        assert writer.wait() == 0 and len(lines) == 300
        assert check_log(store, sid, acks(lines)) == (300, 300)
        assert reads > 3


def test_two_writer_processes_share_the_file(tmp_path: Path) -> None:
    with SessionStore(tmp_path) as store:
        sids = [store.create_session(tmp_path, "m", "fp").id for _ in range(2)]
        writers = [spawn_writer(tmp_path, sid, 0, 200) for sid in sids]
        outputs = [w.communicate(timeout=60)[0].splitlines() for w in writers]
        assert [w.returncode for w in writers] == [0, 0]
        for sid, lines in zip(sids, outputs, strict=True):
            assert check_log(store, sid, acks(lines)) == (200, 200)
        assert store.integrity_check() == []


def test_full_synchronous_is_available(tmp_path: Path) -> None:
    with SessionStore(tmp_path, synchronous="FULL") as store:
        sid = store.create_session(tmp_path, "m", "fp").id
        store.append_event(sid, 0, "note", {})
        assert len(store.events(sid)) == 1
