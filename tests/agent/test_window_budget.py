"""The window is a budget: replies always have room, a full window ends the turn cleanly, tool
results too long to fit are replaced by a line, and interrupted turns keep their tool results."""

from __future__ import annotations

import json
import time

from agent.backends.base import GenParams
from agent.backends.scripted import ScriptedBackend
from agent.events import (
    Error,
    Interrupt,
    Shutdown,
    ToolCallStarted,
    TurnFinished,
    UserInput,
)
from agent.loop import LoopConfig
from agent.session import AgentSession, SessionOptions, snapshot_budget
from memory.store import SessionStore


def call(name: str, **args) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def drive(repo, script, prompts, window=32768, store=None, max_tokens=256, on_event=None):
    backend = ScriptedBackend(script, delay_s=0.01, context_window=window)
    opts = SessionOptions(permission_mode="auto",
                          loop=LoopConfig(max_steps=4, gen=GenParams(max_tokens=max_tokens)))
    session = AgentSession(backend, repo, store, options=opts)
    for text in prompts:
        session.submit(UserInput(text))
    session.submit(Shutdown())
    events, deadline = [], time.monotonic() + 30
    while not session.closed or (e := session.next_event(0)) is not None:
        assert time.monotonic() < deadline, events[-5:]
        e = session.next_event(0.05)
        if e is not None:
            events.append(e)
            if on_event:
                on_event(session, e)
    return session, backend, events


def finished(events) -> list[TurnFinished]:
    return [e for e in events if isinstance(e, TurnFinished)]


def test_a_prompt_larger_than_the_window_ends_context_full_in_one_line(git_repo):
    _, backend, events = drive(git_repo, ["never"], ["x" * 40000], window=4096)
    turn = finished(events)[-1]
    assert turn.status == "context_full" and "\n" not in turn.text
    assert "context window is full" in turn.text and "new session" in turn.text
    assert backend.calls == 0 and not [e for e in events if isinstance(e, Error)]


def test_the_reply_room_is_kept_free(git_repo):
    # the prompt leaves fewer than max_tokens free: the turn does not start a starved reply
    _, backend, events = drive(git_repo, ["never"], ["y" * 7600], window=4096, max_tokens=512)
    assert finished(events)[-1].status == "context_full" and backend.calls == 0


def test_a_reply_never_runs_past_the_window(git_repo):
    _, _, events = drive(git_repo, ["z" * 100000], ["go"], window=4096, max_tokens=4096)
    turn = finished(events)[-1]
    assert turn.status == "done" and turn.usage.context_tokens <= 4096


def test_a_tool_result_too_long_to_fit_is_replaced_by_a_line(git_repo):
    (git_repo / "huge.txt").write_text(("word " * 20 + "\n") * 2000)
    seen = []

    def answer(messages):
        seen.append(messages[-1]["content"])
        return "it is long."

    _, _, events = drive(git_repo, [call("read", path="huge.txt"), answer], ["read huge.txt"],
                         window=4096)
    assert finished(events)[-1].status == "done"
    assert seen and "did not fit in the context window" in seen[0]


def test_an_interrupt_mid_tool_keeps_the_results_in_the_context(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")

    def interrupt(session, event):
        if isinstance(event, ToolCallStarted):
            session.submit(Interrupt())

    session, _, events = drive(git_repo, [call("shell", command="sleep 30")], ["wait"],
                               store=store, on_event=interrupt)
    assert finished(events)[-1].status == "interrupted"
    roles = [e.payload["role"] for e in store.events(session.session_id)
             if e.kind == "message_added"]
    assert roles == ["system", "user", "assistant", "tool"]
    assert [s.kind for s in store.segments(session.session_id)][-1] == "tool"
    assert store.get(session.session_id).status == "interrupted"


def test_recorded_events_are_the_emitted_ones(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    session, _, events = drive(git_repo, [call("read", path="README.md"), "a demo."], ["what?"],
                               store=store)
    kinds = [e.kind for e in store.events(session.session_id)]
    shown = {type(e).__name__ for e in events}
    assert "MessageAdded" not in shown  # recorded only
    assert kinds.count("tool_started") == kinds.count("tool_finished") == 1
    assert kinds.count("turn_finished") == 1 and "message" not in kinds
    added = [e for e in store.events(session.session_id) if e.kind == "message_added"]
    assert [e.payload["role"] for e in added] == ["system", "user", "assistant", "tool",
                                                  "assistant"]


def test_snapshot_budget_is_a_share_that_leaves_the_reply_and_conversation_room():
    assert snapshot_budget(8192, 1024, 1700) == 8192 - 1024 - 1700 - 2048
    assert snapshot_budget(8192, 512, 100) == 4096  # at most half of a small window
    assert snapshot_budget(1_000_000, 1024, 2000, fraction=0.8) == 1_000_000 - 3024 - 250_000
    assert snapshot_budget(4096, 2048, 1800) == 0  # no room: no snapshot
