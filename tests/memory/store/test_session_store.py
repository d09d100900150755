"""SessionStore in one process: round trips, ids, rewind, fork, export, and a 1M-token log."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memory.store import (
    AmbiguousSessionId,
    SessionNotFound,
    SessionStore,
    StoreError,
    records,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore.open(tmp_path / "data") as s:
        yield s


def new(store: SessionStore, repo: Path | str = "/tmp", title: str | None = None) -> str:
    return store.create_session(repo, "smollm2-135m", "fp-abc", title=title).id


def test_create_and_get_round_trip(store: SessionStore, tmp_path: Path) -> None:
    info = store.create_session(tmp_path, "smollm2-135m", "fp-abc", title="fix the test")
    assert info.repo_root == str(tmp_path.resolve())
    assert (info.model, info.model_fingerprint) == ("smollm2-135m", "fp-abc")
    assert info.title == "fix the test"
    assert (info.status, info.parent_id, info.turn_count, info.n_tokens) == ("active", None, 0, 0)
    assert info.created_at.tzinfo is not None
    assert store.get(info.id) == info
    assert store.path == tmp_path / "data" / "sessions.db"


def test_events_round_trip_in_order_with_seq_per_turn(store: SessionStore) -> None:
    sid = new(store)
    payloads = [(0, "note", {"text": "repo snapshot"}), (1, "user_message", {"text": "héllo"})]
    payloads += [(1, "tool_call", {"name": "read", "args": {"path": "a.py"}})]
    payloads += [(2, "usage", {"prompt": 10, "completion": 3, "ratio": 0.5, "ok": True})]
    ids = [store.append_event(sid, turn, kind, p) for turn, kind, p in payloads]
    assert ids == sorted(ids)
    got = store.events(sid)
    assert [(e.turn, e.kind, e.payload) for e in got] == payloads
    assert [e.seq for e in got] == [0, 0, 1, 0]
    assert [e.id for e in store.events(sid, since=ids[1])] == ids[2:]
    assert store.get(sid).turn_count == 2


def test_tokens_round_trip_and_segments(store: SessionStore) -> None:
    sid = new(store)
    assert store.append_tokens(sid, 0, "system", [1, 2, 3], text="sys") == 0
    assert store.append_tokens(sid, 1, "user", np.array([4, 5], dtype=np.int64)) == 1
    assert store.append_tokens(sid, 1, "assistant", [2**31 - 1], text="big") == 2
    assert store.append_tokens(sid, 1, "assistant", [], text="") == 3  # an empty reply
    assert store.token_log(sid) == [1, 2, 3, 4, 5, 2**31 - 1]
    segs = store.segments(sid)
    assert [(s.index, s.turn, s.kind, s.ids, s.text) for s in segs] == [
        (0, 0, "system", (1, 2, 3), "sys"),
        (1, 1, "user", (4, 5), None),
        (2, 1, "assistant", (2**31 - 1,), "big"),
        (3, 1, "assistant", (), ""),
    ]
    assert [s.n_tokens for s in store.segments(sid, with_ids=False)] == [3, 2, 1, 0]
    assert store.segments(sid, with_ids=False)[0].ids == ()
    assert store.get(sid).n_tokens == 6


def test_bad_arguments_are_value_errors(store: SessionStore) -> None:
    sid = new(store)
    with pytest.raises(ValueError, match="segment kind"):
        store.append_tokens(sid, 0, "robot", [1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\*\*31\)"):
        store.append_tokens(sid, 0, "user", [2**31])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\*\*31\)"):
        store.append_tokens(sid, 0, "user", [-1])
    with pytest.raises(ValueError, match="JSON"):
        store.append_event(sid, 0, "note", {"x": object()})
    with pytest.raises(ValueError, match="store's own"):
        store.append_event(sid, 0, "rewind", {})
    with pytest.raises(ValueError, match="turn"):
        store.append_event(sid, -1, "note", {})
    with pytest.raises(ValueError, match="status"):
        store.set_status(sid, "sleeping")
    assert store.events(sid) == [] and store.token_log(sid) == []


def test_the_past_is_closed_to_appends(store: SessionStore) -> None:
    sid = new(store)
    store.append_event(sid, 3, "note", {})
    with pytest.raises(StoreError, match="append-only"):
        store.append_tokens(sid, 2, "user", [1])
    store.append_tokens(sid, 3, "user", [1])  # the current turn stays open


def test_unknown_session_is_a_one_line_error(store: SessionStore) -> None:
    for call in (
        lambda: store.get("nope"),
        lambda: store.append_event("nope", 0, "note", {}),
        lambda: store.append_tokens("nope", 0, "user", [1]),
        lambda: store.token_log("nope"),
        lambda: store.events("nope"),
        lambda: store.set_title("nope", "x"),
        lambda: store.delete("nope"),
        lambda: store.fork("nope"),
    ):
        with pytest.raises(SessionNotFound) as e:
            call()
        assert "\n" not in str(e.value) and "agent sessions list" in str(e.value)


def test_ids_sort_by_time_and_resolve_by_unique_prefix(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = records.new_session_id(records.utc_now())
    assert len(real) == len("20261128-114501-ab12") and real[8] == "-" and real[15] == "-"
    queue = ["20261128-114501-ab12", "20261128-114501-ab12", "20261128-114501-ab34"]
    queue += ["20261128-114502-cd56"]
    monkeypatch.setattr(records, "new_session_id", lambda now: queue.pop(0))
    a = new(store)
    b = new(store)  # the first candidate collides with a: the store draws again
    c = new(store)
    assert (a, b, c) == ("20261128-114501-ab12", "20261128-114501-ab34", "20261128-114502-cd56")
    assert store.get("20261128-114501-ab1").id == a
    assert store.get(" 20261128-114502").id == c
    assert store.get(b).id == b
    with pytest.raises(AmbiguousSessionId, match="give more") as e:
        store.get("20261128-114501")
    assert a in str(e.value) and b in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SessionNotFound, match="no session id starts with"):
        store.get("2027")
    with pytest.raises(SessionNotFound):
        store.get("")
    with pytest.raises(SessionNotFound):
        store.get("2026%")  # LIKE wildcards are taken literally


def test_list_latest_status_title(store: SessionStore, tmp_path: Path) -> None:
    repo_a, repo_b = tmp_path / "a", tmp_path / "b"
    a = new(store, repo_a, title="first")
    b = new(store, repo_b)
    c = new(store, repo_a)
    store.append_tokens(c, 0, "system", [1] * 7)
    time.sleep(0.002)
    store.append_event(a, 1, "user_message", {"text": "more"})
    assert [s.id for s in store.list_sessions()] == [a, c, b]
    assert [s.id for s in store.list_sessions(repo_a)] == [a, c]
    assert [s.id for s in store.list_sessions(limit=1)] == [a]
    assert store.latest(repo_b).id == b
    assert store.latest(str(repo_a) + "/.").id == a  # matched in resolved form
    assert store.latest(tmp_path / "elsewhere") is None
    listed = {s.id: s for s in store.list_sessions()}
    assert (listed[a].title, listed[a].turn_count, listed[c].n_tokens) == ("first", 1, 7)
    store.set_status(b, "finished")
    store.set_title(b, "named later")
    info = store.get(b)
    assert (info.status, info.title) == ("finished", "named later")
    assert store.latest().id == b  # any write is activity


def test_rewind_supersedes_events_and_drops_later_tokens(store: SessionStore) -> None:
    sid = new(store)
    for turn in range(4):
        store.append_event(sid, turn, "user_message", {"turn": turn})
        store.append_tokens(sid, turn, "user", [turn] * 3)
        store.add_checkpoint(sid, turn, f"sha{turn}", ref=f"refs/agent/{turn}")
    assert store.truncate_to_turn(sid, 1) == 6
    assert store.token_log(sid) == [0, 0, 0, 1, 1, 1]
    assert [e.payload.get("turn") for e in store.events(sid)] == [0, 1, None]
    assert [c.turn for c in store.checkpoints(sid)] == [0, 1]
    assert store.get(sid).turn_count == 1
    every = store.events(sid, include_superseded=True)
    assert [(e.turn, e.kind, e.superseded) for e in every] == [
        (0, "user_message", False),
        (1, "user_message", False),
        (2, "user_message", True),
        (3, "user_message", True),
        (1, "rewind", False),
    ]
    assert every[-1].payload == {"to_turn": 1, "from_turn": 3}
    # The conversation goes on from turn 2 again; new events are live, seqs never collide.
    store.append_event(sid, 2, "user_message", {"turn": "2 again"})
    store.append_tokens(sid, 2, "user", [9])
    assert store.token_log(sid) == [0, 0, 0, 1, 1, 1, 9]
    assert store.events(sid)[-1].payload == {"turn": "2 again"}
    assert store.events(sid)[-1].seq == 1
    with pytest.raises(StoreError, match="it is at turn 2"):
        store.truncate_to_turn(sid, 5)


def test_rewind_to_current_turn_drops_the_next_turns_checkpoint(store: SessionStore) -> None:
    sid = new(store)
    store.append_event(sid, 1, "user_message", {})
    store.add_checkpoint(sid, 2, "sha2")  # taken as turn 2 started; nothing else happened
    assert store.truncate_to_turn(sid, 1) == 0
    assert store.checkpoints(sid) == []
    assert [e.kind for e in store.events(sid, include_superseded=True)] == ["user_message"]


def test_checkpoints_round_trip(store: SessionStore) -> None:
    sid = new(store)
    made = store.add_checkpoint(sid, 1, "a" * 40, ref="refs/agent/s/1")
    store.add_checkpoint(sid, 0, "b" * 40)
    got = store.checkpoints(sid)
    assert [(c.turn, c.commit, c.ref) for c in got] == [
        (0, "b" * 40, None),
        (1, "a" * 40, "refs/agent/s/1"),
    ]
    assert got[1] == made


def test_fork_copies_the_live_log_up_to_a_turn(store: SessionStore) -> None:
    sid = new(store, title="parent")
    for turn in range(3):
        store.append_event(sid, turn, "note", {"turn": turn})
        store.append_tokens(sid, turn, "user", [turn, turn])
        store.add_checkpoint(sid, turn, f"sha{turn}")
    store.truncate_to_turn(sid, 1)
    store.append_event(sid, 2, "note", {"turn": "2b"})
    store.append_tokens(sid, 2, "user", [7])
    child = store.fork(sid, at_turn=1)
    assert (child.parent_id, child.title, child.turn_count, child.n_tokens) == (sid, "parent", 1, 4)
    assert store.token_log(child.id) == [0, 0, 1, 1]
    kinds = [(e.kind, e.payload) for e in store.events(child.id, include_superseded=True)]
    assert kinds[:2] == [("note", {"turn": 0}), ("note", {"turn": 1})]
    assert kinds[-1] == ("fork", {"parent_id": sid, "at_turn": 1})
    assert [c.commit for c in store.checkpoints(child.id)] == ["sha0", "sha1"]
    whole = store.fork(sid)
    assert store.token_log(whole.id) == store.token_log(sid) == [0, 0, 1, 1, 7]
    # The child is its own log: appending to it leaves the parent alone.
    store.append_tokens(child.id, 2, "user", [5])
    assert store.token_log(sid) == [0, 0, 1, 1, 7]
    with pytest.raises(StoreError, match="turns are 0..2"):
        store.fork(sid, at_turn=3)


def test_delete_cascades_and_unlinks_forks(store: SessionStore) -> None:
    sid = new(store)
    store.append_event(sid, 0, "note", {})
    store.append_tokens(sid, 0, "system", [1])
    store.add_checkpoint(sid, 0, "sha")
    child = store.fork(sid)
    store.delete(sid)
    with pytest.raises(SessionNotFound):
        store.get(sid)
    assert store.get(child.id).parent_id is None
    assert store.token_log(child.id) == [1]
    assert store.integrity_check() == []
    with sqlite3.connect(store.path) as db:
        left = db.execute(
            "SELECT (SELECT count(*) FROM events WHERE session_id = ?) + "
            "(SELECT count(*) FROM token_segments WHERE session_id = ?) + "
            "(SELECT count(*) FROM checkpoints WHERE session_id = ?)",
            (sid, sid, sid),
        ).fetchone()
    assert left == (0,)


def test_export_is_json_able(store: SessionStore) -> None:
    sid = new(store, title="t")
    store.append_event(sid, 1, "user_message", {"text": "hi"})
    store.append_tokens(sid, 1, "user", [1, 2], text="hi")
    store.append_event(sid, 2, "note", {})
    store.truncate_to_turn(sid, 1)
    store.add_checkpoint(sid, 1, "sha")
    data = json.loads(json.dumps(store.export(sid)))
    assert data["format"] == "resident-agent.session/2"
    assert data["session"]["id"] == sid and data["session"]["n_tokens"] == 2
    assert [(e["kind"], e["superseded"]) for e in data["events"]] == [
        ("user_message", False),
        ("note", True),
        ("rewind", False),
    ]
    assert data["segments"][0]["ids"] == [1, 2] and data["segments"][0]["text"] == "hi"
    assert data["checkpoints"][0]["commit"] == "sha"
    assert data["session"]["created_at"].endswith("+00:00")


def test_threads_share_one_writer(store: SessionStore) -> None:
    sid = new(store)
    ids: list[int] = []

    def write(k: int) -> None:
        for i in range(50):
            ids.append(store.append_event(sid, 0, "note", {"k": k, "i": i}))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = store.events(sid)
    assert sorted(ids) == [e.id for e in got]
    assert sorted(e.seq for e in got) == list(range(200))


def test_million_token_log_reads_back_fast(store: SessionStore) -> None:
    sid = new(store)
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 152_000, 500_000)]  # a repository snapshot, then many turns
    parts += [rng.integers(0, 152_000, 1_000) for _ in range(500)]
    for turn, part in enumerate(parts):
        store.append_tokens(sid, turn, "repo" if turn == 0 else "user", part)
    start = time.perf_counter()
    log = store.token_log(sid)
    elapsed = time.perf_counter() - start
    assert len(log) == 1_000_000 and log[:3] == parts[0][:3].tolist()
    assert np.array_equal(store.token_array(sid), np.concatenate(parts))
    assert elapsed < 0.5, f"reading a 1M-token log took {elapsed:.3f} s"
    assert store.get(sid).n_tokens == 1_000_000


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.close()
    with pytest.raises(AssertionError, match="closed"):
        store.list_sessions()
