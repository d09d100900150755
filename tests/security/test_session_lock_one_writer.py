"""One writer per session: a second live process is refused with one line; a crashed one's lock
is stale; a session killed before its system segment is rebuilt before any tool can run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.backends.scripted import ScriptedBackend
from agent.context import INSTRUCTIONS
from agent.events import Error, Shutdown, TurnFinished, UserInput
from agent.session import AgentSession, SessionOptions
from memory.store import SessionLocked, SessionStore

HOLD = """
import sys, time
from memory.store import SessionStore
store = SessionStore(sys.argv[1])
store.acquire_lock(sys.argv[2])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def git_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "a.py").write_text("x = 1\n")
    return repo


def _drain(session) -> list:
    assert session.wait_closed(20)
    return list(iter(lambda: session.next_event(0), None))


def _run(repo, store, script, resume=None, ops=("hello",)):
    session = AgentSession(ScriptedBackend(list(script)), repo, store, resume_id=resume,
                           options=SessionOptions(permission_mode="auto"))
    for text in ops:
        session.submit(UserInput(text))
    session.submit(Shutdown())
    return session, _drain(session)


@pytest.fixture
def saved(git_repo, tmp_path):
    """A finished one-turn session: (store, session id)."""
    store = SessionStore(tmp_path / "data")
    session, _ = _run(git_repo, store, ["hi"])
    return store, session.session_id


@pytest.fixture
def holder(saved, tmp_path):
    """Another process holding the saved session's lock."""
    store, sid = saved
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "data"), sid],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_second_writer_is_refused_with_one_line_and_changes_nothing(git_repo, saved, holder):
    store, sid = saved
    before = (store.get(sid).turn_count, len(store.events(sid)), len(store.token_log(sid)))
    _, events = _run(git_repo, store, ["never"], resume=sid)
    errors = [e for e in events if isinstance(e, Error)]
    assert len(errors) == 1 and errors[0].fatal
    assert "open in another agent" in errors[0].message and "\n" not in errors[0].message
    assert not [e for e in events if isinstance(e, TurnFinished)]
    assert (store.get(sid).turn_count, len(store.events(sid)),
            len(store.token_log(sid))) == before
    assert store.get(sid).status == "finished"  # the refused process did not touch it


def test_a_crashed_writer_leaves_a_stale_lock_and_a_crashed_session(git_repo, saved, holder):
    store, sid = saved
    store.set_status(sid, "active")  # as the holder would have while running
    assert store.get(sid).status == "active"
    holder.kill()
    holder.wait(10)
    assert store.get(sid).status == "crashed"
    assert [s.status for s in store.list_sessions()] == ["crashed"]
    session, events = _run(git_repo, store, ["back"], resume=sid)
    assert [e.status for e in events if isinstance(e, TurnFinished)] == ["done"]
    assert store.get(sid).status == "finished" and store.get(sid).turn_count == 2


def test_the_lock_is_released_on_exit(saved, tmp_path):
    _, sid = saved
    take = ("import sys; from memory.store import SessionStore; "
            "print(SessionStore(sys.argv[1]).acquire_lock(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", take, str(tmp_path / "data"), sid],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_the_store_refuses_a_live_lock_directly(saved, holder):
    store, sid = saved
    with pytest.raises(SessionLocked, match="close that one first"):
        store.acquire_lock(sid)


def test_a_session_without_its_system_segment_is_rebuilt_before_any_tool(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    info = store.create_session(str(git_repo), "scripted", "scripted", "killed early")
    store.append_event(info.id, 1, "turn_started", {"turn": 1, "prompt": "lost"})
    store.release_lock(info.id)  # the process died right after creating it
    seen: list[list[dict]] = []

    def write_first(messages):
        seen.append(list(messages))
        return ('<tool_call>\n{"name": "write", "arguments": {"path": "made.txt", '
                '"content": "x"}}\n</tool_call>')

    _, events = _run(git_repo, store, [write_first, "done"], resume=info.id)
    assert seen and seen[0][0]["role"] == "system" and INSTRUCTIONS in seen[0][0]["content"]
    assert (git_repo / "made.txt").exists()
    segments = store.segments(info.id, with_ids=False)
    assert segments[0].kind == "system" and segments[0].turn == 0
    kinds = [e.kind for e in store.events(info.id)]
    assert kinds.index("message_added") < kinds.index("tool_started")
    shown = json.dumps([e.payload for e in store.events(info.id)])
    assert "lost" not in shown  # the half-made turn is superseded
