"""The default model (SmolLM2-135M, CPU) makes a real `task` call: the chain policy spells the
call out when the prompt asks for a sub-agent, the sub-agent (a fork of the engine sequence)
reads the file under its own chain and answers, and its answer comes back to the parent. And
two task calls of one reply decode together, in the same engine steps."""

from __future__ import annotations

import subprocess

import pytest

from agent.backends.base import GenParams
from agent.backends.local import LocalBackend
from agent.events import (
    Nested,
    Shutdown,
    SubagentFinished,
    SubagentStarted,
    ToolCallFinished,
    TurnFinished,
    UserInput,
)
from agent.loop import LoopConfig
from agent.session import AgentSession, SessionOptions
from memory.store import SessionStore
from runtime.local_model import LocalModel, RuntimeOptions
from tests.agent.subagent_parent import ScriptedParent, ScriptedParentBackend
from tests.agent.test_subagents import of

pytestmark = pytest.mark.slow


@pytest.fixture
def notes_repo(tmp_path):
    """A git repository of one file, notes.txt, that holds the code word."""
    path = tmp_path / "notes"
    path.mkdir()
    (path / "notes.txt").write_text("The code word is PELICAN.\n")
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    loaded = LocalModel.open(str(smollm2_gguf), RuntimeOptions(device="cpu", page_size=16))
    yield loaded
    loaded.close()


def events_of(session) -> list:
    events = []
    while not (session.closed and session._events.empty()):
        if (e := session.next_event(0.1)) is not None:
            events.append(e)
    return events


def fork_prefix(store, session_id: str) -> list[int]:
    """The parent's log through its first reply: what a sub-agent forked at its call holds."""
    segments = store.segments(session_id)
    end = next(i for i, s in enumerate(segments) if s.kind == "assistant") + 1
    return [t for s in segments[:end] for t in s.ids]


def test_the_default_model_delegates_a_read_to_a_subagent(model, notes_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    loop = LoopConfig(gen=GenParams(max_tokens=64))  # the sub-agent's replies too
    session = AgentSession(LocalBackend(model), notes_repo, store,
                           options=SessionOptions(permission_mode="auto", loop=loop))
    session.submit(UserInput("Use a sub-agent to read notes.txt and tell me the code word."))
    session.submit(Shutdown())
    events = events_of(session)
    task = of(events, ToolCallFinished)[0]
    assert task.name == "task" and task.ok and task.content.strip()
    read = of(events, ToolCallFinished, nested=task.call_id)
    assert read and read[0].name == "read" and read[0].ok and "PELICAN" in read[0].content
    started, done = of(events, SubagentStarted)[0], of(events, SubagentFinished)[0]
    assert done.status == "done" and done.text.strip() == task.content.strip()
    # the fork: the parent's tokens up to and including its task call, by ids
    prefix = fork_prefix(store, session.session_id)
    assert started.shared_tokens == len(prefix)
    assert store.token_log(started.agent_id)[: len(prefix)] == prefix
    assert 0 < done.usage.computed_tokens < started.shared_tokens  # only its own part
    assert of(events, TurnFinished)[-1].status == "done"
    assert any(isinstance(e, Nested) for e in events)


def test_two_task_calls_of_one_reply_decode_in_the_same_steps(model, notes_repo, tmp_path):
    both = "\n".join(f'<tool_call>\n{{"name": "task", "arguments": {{"description": "{d}", '
                      f'"prompt": "Say {d}."}}}}\n</tool_call>' for d in ("one", "two"))
    ScriptedParent.script[:] = [both, "both answered."]
    rows: list[int] = []
    step = model.engine.step

    def counted():
        rows.append(len(model.engine.running))
        return step()

    model.engine.step = counted
    store = SessionStore(tmp_path / "data")
    loop = LoopConfig(max_steps=2, gen=GenParams(max_tokens=8), tool_choice="none")
    try:
        session = AgentSession(ScriptedParentBackend(model), notes_repo, store,
                               options=SessionOptions(permission_mode="auto", loop=loop))
        session.submit(UserInput("two things"))
        session.submit(Shutdown())
        events = events_of(session)
    finally:
        del model.engine.step
    done = of(events, SubagentFinished)
    assert [d.status for d in done] == ["done", "done"]
    assert max(rows) == 2  # one step decoded both sub-agents
    prefix = fork_prefix(store, session.session_id)
    for d in done:
        assert store.token_log(d.agent_id)[: len(prefix)] == prefix
    assert of(events, TurnFinished)[-1].status == "done"
