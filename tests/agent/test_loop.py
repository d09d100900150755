"""The loop against a scripted model, in a real git repository with a real session store."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agent.backends.base import GenParams
from agent.backends.scripted import ScriptedBackend
from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Interrupt,
    SessionStarted,
    Shutdown,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    UserInput,
)
from agent.loop import LoopConfig
from agent.session import AgentSession, SessionOptions
from memory.store import SessionStore


def call(name: str, **args) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def run_session(repo, script, store=None, ops=(), mode="auto", max_steps=6, delay_s=0.0,
                on_event=None, timeout=30.0, **options):
    backend = ScriptedBackend(script, delay_s=delay_s)
    opts = SessionOptions(permission_mode=mode, loop=LoopConfig(max_steps=max_steps,
                                                                gen=GenParams()), **options)
    session = AgentSession(backend, repo, store, options=opts)
    for op in ops:
        session.submit(op)
    events, deadline = [], time.monotonic() + timeout
    while not (session.closed and (e := session.next_event(0)) is None):
        if time.monotonic() > deadline:
            raise AssertionError(f"session did not finish; events: {events[-5:]}")
        e = session.next_event(0.05) if not session.closed else e
        if e is not None:
            events.append(e)
            if on_event:
                on_event(session, e)
    return session, events


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_multi_step_tool_use_reads_then_answers(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    script = [call("read", path="src/util.py"), "helper returns x + 1."]
    session, events = run_session(git_repo, script, store,
                                  [UserInput("what does helper return?"), Shutdown()])
    assert of(events, SessionStarted)[0].session_id == session.session_id
    finished = of(events, ToolCallFinished)
    assert finished[0].name == "read" and finished[0].ok and "return x + 1" in finished[0].content
    turn = of(events, TurnFinished)[-1]
    assert turn.status == "done" and turn.text == "helper returns x + 1."
    assert "".join(e.text for e in of(events, TokenDelta)).endswith("helper returns x + 1.")
    kinds = [e.kind for e in store.events(session.session_id)]
    assert kinds.count("tool_started") == 1 and kinds.count("tool_finished") == 1
    assert store.checkpoints(session.session_id)[0].turn == 1
    assert store.get(session.session_id).status == "finished"


def test_malformed_call_goes_back_to_the_model(git_repo):
    seen = []

    def second(messages):
        seen.append(messages[-1])
        return "ok, giving up"

    script = ["<tool_call>{not json}</tool_call>", second]
    _, events = run_session(git_repo, script, ops=[UserInput("go"), Shutdown()])
    result = of(events, ToolCallFinished)[0]
    assert not result.ok and "not valid JSON" in result.content
    assert seen[0]["role"] == "tool" and "not valid JSON" in seen[0]["content"]
    assert of(events, TurnFinished)[-1].status == "done"


def test_unknown_tool_and_bad_arguments_are_tool_errors(git_repo):
    script = [call("teleport", to="mars") + call("read", nope=1), "done"]
    _, events = run_session(git_repo, script, ops=[UserInput("go"), Shutdown()])
    a, b = of(events, ToolCallFinished)
    assert "unknown tool 'teleport'" in a.content and not b.ok and "bad arguments" in b.content


def test_tool_timeout_is_reported_not_fatal(git_repo):
    script = [call("shell", command="sleep 30", timeout_s=1), "the command timed out"]
    _, events = run_session(git_repo, script, ops=[UserInput("go"), Shutdown()])
    result = of(events, ToolCallFinished)[0]
    assert not result.ok and "timed out" in result.content.lower()
    assert of(events, TurnFinished)[-1].status == "done"


def test_permission_denied_by_the_user(git_repo):
    def deny(session, event):
        if isinstance(event, ApprovalRequested):
            session.submit(ApprovalDecision(event.call_id, "deny"))

    script = [call("shell", command="touch made.txt"), "fine"]
    _, events = run_session(git_repo, script, mode="ask", on_event=deny,
                            ops=[UserInput("go"), Shutdown()])
    assert of(events, ApprovalRequested)[0].name == "shell"
    result = of(events, ToolCallFinished)[0]
    assert not result.ok and "denied" in result.content
    assert not (git_repo / "made.txt").exists()


def test_always_allow_adds_a_rule(git_repo):
    def always(session, event):
        if isinstance(event, ApprovalRequested):
            session.submit(ApprovalDecision(event.call_id, "always", "shell(touch *)"))

    script = [call("shell", command="touch a.txt"), call("shell", command="touch b.txt"), "ok"]
    _, events = run_session(git_repo, script, mode="ask", on_event=always,
                            ops=[UserInput("go"), Shutdown()])
    assert len(of(events, ApprovalRequested)) == 1
    assert (git_repo / "a.txt").exists() and (git_repo / "b.txt").exists()


def test_read_only_mode_denies_edits(git_repo):
    script = [call("write", path="new.txt", content="x"), "ok"]
    _, events = run_session(git_repo, script, mode="read-only", ops=[UserInput("go"), Shutdown()])
    assert not of(events, ToolCallFinished)[0].ok and not (git_repo / "new.txt").exists()


def test_turn_limit(git_repo):
    script = [call("glob", pattern="*.md")] * 3
    _, events = run_session(git_repo, script, max_steps=3, ops=[UserInput("loop"), Shutdown()])
    assert of(events, TurnFinished)[-1].status == "turn_limit"
    assert len(of(events, ToolCallStarted)) == 3


def test_interrupt_stops_generation(git_repo):
    script = ["word " * 400]
    stop = threading.Event()

    def interrupt(session, event):
        if isinstance(event, TokenDelta) and not stop.is_set():
            stop.set()
            session.submit(Interrupt())

    _, events = run_session(git_repo, script, delay_s=0.01, on_event=interrupt,
                            ops=[UserInput("talk"), Shutdown()])
    turn = of(events, TurnFinished)[-1]
    assert turn.status == "interrupted"
    assert len("".join(e.text for e in of(events, TokenDelta))) < len(script[0])


def test_input_queued_while_a_turn_runs(git_repo):
    _, events = run_session(git_repo, ["first", "second"], delay_s=0.01,
                            ops=[UserInput("a"), UserInput("b"), Shutdown()])
    assert [t.text for t in of(events, TurnFinished)] == ["first", "second"]


@pytest.mark.parametrize("fmt", ["stream-json"])
def test_resume_continues_the_conversation(git_repo, tmp_path, fmt):
    store = SessionStore(tmp_path / "data")
    first, _ = run_session(git_repo, ["remembered"], store, [UserInput("remember 42"), Shutdown()])
    seen = []

    def recall(messages):
        seen.extend(m["content"] for m in messages)
        return "it was 42"

    backend = ScriptedBackend([recall])
    session = AgentSession(backend, git_repo, store, resume_id=first.session_id[:12],
                           options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("what was it?"))
    session.submit(Shutdown())
    assert session.wait_closed(10)
    assert "remember 42" in seen and "remembered" in seen
    assert store.get(first.session_id).turn_count == 2


def test_outside_changes_are_appended_as_a_note(git_repo, tmp_path):
    seen = []

    def capture(messages):
        seen.append([m["content"] for m in messages])
        return "noted"

    backend = ScriptedBackend(["first", capture])
    session = AgentSession(backend, git_repo, SessionStore(tmp_path / "d"),
                           options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("hello"))
    deadline = time.monotonic() + 10
    while not any(isinstance(e, TurnFinished) for e in iter(lambda: session.next_event(0.05),
                                                             None)):
        assert time.monotonic() < deadline
    time.sleep(0.3)
    (git_repo / "src/util.py").write_text("def helper(x):\n    return x + 2\n")
    time.sleep(1.5)  # watchfiles debounce
    session.submit(UserInput("again"))
    session.submit(Shutdown())
    assert session.wait_closed(10)
    note = [c for c in seen[0] if c.startswith("[note]")]
    assert note and "-    return x + 1" in note[0] and "+    return x + 2" in note[0]
    first = [c for c in seen[0] if "def helper" in c and c.startswith("You are")]
    assert first and "return x + 1" in first[0]  # the snapshot in the system message is unchanged


def test_a_repeated_call_is_answered_with_text_next(git_repo):
    seen = []

    backend = ScriptedBackend([call("glob", pattern="*.md"), call("glob", pattern="*.md"),
                               "README.md is there", "unused"])
    original = backend.conversation

    def conversation(tools, restore=None):
        conv = original(tools, restore)
        generate = conv.generate

        def spy(params, cancel):
            seen.append(params.tool_choice)
            return generate(params, cancel)

        conv.generate = spy
        return conv

    backend.conversation = conversation
    session = AgentSession(backend, git_repo, options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("find docs"))
    session.submit(Shutdown())
    assert session.wait_closed(10)
    assert seen == ["auto", "auto", "none"]


def test_resume_can_replay_earlier_turns_as_events(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    script = [call("read", path="src/util.py"), "helper adds one."]
    first, _ = run_session(git_repo, script, store, [UserInput("what does helper do?"), Shutdown()])
    backend = ScriptedBackend([])
    session = AgentSession(backend, git_repo, store, resume_id=first.session_id,
                           options=SessionOptions(permission_mode="auto", replay_history=True))
    session.submit(Shutdown())
    assert session.wait_closed(10)
    events = list(iter(lambda: session.next_event(0), None))
    assert [type(e).__name__ for e in events if not isinstance(e, SessionStarted)
            and type(e).__name__ != "Progress"] == [
        "SnapshotTaken", "TurnStarted", "ToolCallStarted", "ToolCallFinished", "TokenDelta",
        "TurnFinished"]  # what the snapshot inlined, then the turn
    assert of(events, TurnStarted)[0].prompt == "what does helper do?"
    assert of(events, TurnFinished)[0].text == "helper adds one."


def test_resume_on_another_model_is_refused(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    first, _ = run_session(git_repo, ["ok"], store, [UserInput("hi"), Shutdown()])
    other = ScriptedBackend([])
    other.fingerprint = "another-model"
    session = AgentSession(other, git_repo, store, resume_id=first.session_id)
    assert session.wait_closed(10)
    errors = [e for e in iter(lambda: session.next_event(0), None) if type(e).__name__ == "Error"]
    assert errors and "resume it with --model scripted" in errors[0].message
