"""The default model (SmolLM2-135M, CPU) makes a real `task` call: the chain policy spells the
call out when the prompt asks for a sub-agent, the sub-agent (a fork of the engine sequence)
reads the file under its own chain and answers, and its answer comes back to the parent."""

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


def test_the_default_model_delegates_a_read_to_a_subagent(notes_repo, tmp_path,
                                                            smollm2_gguf):
    model = LocalModel.open(str(smollm2_gguf), RuntimeOptions(device="cpu", page_size=16))
    store = SessionStore(tmp_path / "data")
    loop = LoopConfig(gen=GenParams(max_tokens=64))  # the sub-agent's replies too
    session = AgentSession(LocalBackend(model), notes_repo, store,
                           options=SessionOptions(permission_mode="auto", loop=loop))
    session.submit(UserInput("Use a sub-agent to read notes.txt and tell me the code word."))
    session.submit(Shutdown())
    events = []
    while not (session.closed and session._events.empty()):
        if (e := session.next_event(0.1)) is not None:
            events.append(e)
    model.close()
    task = of(events, ToolCallFinished)[0]
    assert task.name == "task" and task.ok and task.content.strip()
    read = of(events, ToolCallFinished, nested=task.call_id)
    assert read and read[0].name == "read" and read[0].ok and "PELICAN" in read[0].content
    started, done = of(events, SubagentStarted)[0], of(events, SubagentFinished)[0]
    assert done.status == "done" and done.text.strip() == task.content.strip()
    # the fork: the parent's tokens up to and including its task call, by ids
    parent_log = store.token_log(session.session_id)
    child_log = store.token_log(started.agent_id)
    parent_segments = store.segments(session.session_id)
    call_end = next(i for i, s in enumerate(parent_segments) if s.kind == "assistant") + 1
    prefix = [t for s in parent_segments[:call_end] for t in s.ids]
    assert started.shared_tokens == len(prefix) and child_log[: len(prefix)] == prefix
    assert parent_log[: len(prefix)] == prefix
    assert 0 < done.usage.computed_tokens < started.shared_tokens  # only its own part
    assert of(events, TurnFinished)[-1].status == "done"
    assert any(isinstance(e, Nested) for e in events)
