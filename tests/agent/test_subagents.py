"""Sub-agents through the `task` tool, against a scripted model in a real git repository with a
real session store: nesting, permissions, side by side, interrupt, resume."""

from __future__ import annotations

import json
import threading
import time

from agent.backends.base import GenParams
from agent.backends.scripted import ScriptedBackend
from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Interrupt,
    Nested,
    Shutdown,
    SubagentFinished,
    SubagentStarted,
    ToolCallFinished,
    TurnFinished,
    UserInput,
    event_to_json,
)
from agent.loop import LoopConfig
from agent.session import AgentSession, SessionOptions
from memory.store import SessionStore


def call(name: str, **args) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def calls(*pairs) -> str:
    return "\n".join(call(name, **args) for name, args in pairs)


class Router:
    """Replies by who asks: the latest user message names the conversation (the parent's
    prompt, or a sub-agent's), and each has its own list of replies. Works whatever order
    side-by-side sub-agents ask in."""

    def __init__(self, replies: dict[str, list]):
        self.replies = {k: list(v) for k, v in replies.items()}
        self.seen: dict[str, list[list[dict]]] = {}

    def __call__(self, messages):
        key = next(k for m in reversed(messages) if m["role"] == "user"
                   for k in self.replies if k in m["content"])
        self.seen.setdefault(key, []).append([dict(m) for m in messages])
        step = self.replies[key].pop(0)
        return step(messages) if callable(step) else step


def run(repo, router, ops, store=None, mode="auto", timeout=30.0, session=None, delay_s=0.0,
        on_event=None, resume_id=None, **options):
    if session is None:
        backend = ScriptedBackend([router] * 40, delay_s=delay_s)
        opts = SessionOptions(permission_mode=mode,
                              loop=LoopConfig(max_steps=6, gen=GenParams()), **options)
        session = AgentSession(backend, repo, store, resume_id=resume_id, options=opts)
    for op in ops:
        session.submit(op)
    events, deadline = [], time.monotonic() + timeout
    while not (session.closed and session._events.empty()):
        assert time.monotonic() < deadline, f"session did not finish: {events[-5:]}"
        e = session.next_event(0.05)
        if e is not None:
            events.append(e)
            if on_event:
                on_event(session, e)
    return session, events


def of(events, kind, nested=None):
    """Events of `kind`: top-level ones, or (nested=call id / True) a sub-agent's."""
    out = []
    for e in events:
        inner = e.event if isinstance(e, Nested) else e
        if not isinstance(inner, kind):
            continue
        if nested is None and not isinstance(e, Nested):
            out.append(inner)
        elif nested is not None and isinstance(e, Nested) and nested in (True, e.parent_call_id):
            out.append(inner)
    return out


ASK = "what does helper return?"
WORK = "read src/util.py and say what helper returns"


def test_task_forks_the_context_and_its_answer_comes_back(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    router = Router({
        ASK: [call("task", description="find helper", prompt=WORK), "it returns x + 1."],
        WORK: [call("read", path="src/util.py"), "helper returns x + 1"],
    })
    session, events = run(git_repo, router, [UserInput(ASK), Shutdown()], store)
    task = of(events, ToolCallFinished)[0]
    assert task.name == "task" and task.ok and task.content == "helper returns x + 1"
    started, finished = of(events, SubagentStarted)[0], of(events, SubagentFinished)[0]
    assert started.call_id == finished.call_id == task.call_id
    assert finished.status == "done" and finished.shared_tokens == started.shared_tokens > 0
    assert finished.usage.output_tokens > 0 and finished.usage.computed_tokens > 0
    # the sub-agent's events are nested under the task call, its call ids prefixed
    read = of(events, ToolCallFinished, nested=task.call_id)
    assert [c.name for c in read] == ["read"] and read[0].ok
    assert read[0].call_id.startswith(f"{task.call_id}.")
    line = event_to_json(next(e for e in events if isinstance(e, Nested)))
    assert line["parent_call_id"] == task.call_id and line["agent_id"] == started.agent_id
    assert of(events, TurnFinished)[-1].text == "it returns x + 1."
    # the sub-agent saw the parent's whole context, up to its task call, then its prompt
    parent_view, child_view = router.seen[ASK][0], router.seen[WORK][0]
    assert child_view[: len(parent_view)] == parent_view
    assert "task" in child_view[len(parent_view)]["content"]  # the parent's reply: the call
    assert child_view[-1] == {"role": "user", "content": WORK}
    # in the store: a sub-agent session linked to the parent, left out of the list
    child = store.get(started.agent_id)
    assert (child.parent_id, child.fork_turn, child.parent_call_id) == \
        (session.session_id, 1, task.call_id)
    assert child.status == "finished" and child.title == "find helper"
    assert [s.id for s in store.subagents(session.session_id)] == [child.id]
    assert child.id not in [s.id for s in store.list_sessions()]
    assert store.latest().id == session.session_id  # --continue picks the parent
    kinds = [e.kind for e in store.events(session.session_id)]
    assert "subagent_started" in kinds and "subagent_finished" in kinds


def test_permissions_and_tools_are_no_wider_than_the_parents(git_repo):
    router = Router({
        "change things": [calls(("task", {"description": "write", "prompt": "write a file"}),
                                ("task", {"description": "shell", "prompt": "run ls",
                                          "tools": ["read"]}),
                                ("task", {"description": "bad", "prompt": "x",
                                          "tools": ["read", "rm"]})),
                          "done."],
        "write a file": [call("write", path="new.txt", content="x"), "could not write."],
        "run ls": [call("shell", command="ls"), "no shell."],
    })
    session, events = run(git_repo, router, [UserInput("change things"), Shutdown()],
                          mode="read-only")
    results = {r.call_id: r for r in of(events, ToolCallFinished)}
    write, shell, bad = (results[f"call_{i}"] for i in (1, 2, 3))
    assert write.ok and shell.ok  # the sub-agents answered ...
    denied = of(events, ToolCallFinished, nested="call_1")[0]
    assert not denied.ok and "read-only" in denied.content  # ... but could not write
    unknown = of(events, ToolCallFinished, nested="call_2")[0]
    assert not unknown.ok and "unknown tool 'shell'; available: read" in unknown.content
    assert not bad.ok and "no tool 'rm'" in bad.content
    assert not (git_repo / "new.txt").exists()


def test_a_subagent_asks_for_approval_nested(git_repo):
    router = Router({
        "edit it": [call("task", description="w", prompt="write new.txt"), "ok."],
        "write new.txt": [call("write", path="new.txt", content="hi\n"), "written."],
    })

    def answer(session, e):
        if isinstance(e, Nested) and isinstance(e.event, ApprovalRequested):
            session.submit(ApprovalDecision(e.event.call_id, "allow"))

    _, events = run(git_repo, router, [UserInput("edit it"), Shutdown()], mode="ask",
                    on_event=answer)
    asked = of(events, ApprovalRequested, nested="call_1")
    assert [a.call_id for a in asked] == ["call_1.call_1"]
    assert (git_repo / "new.txt").read_text() == "hi\n"


def test_task_calls_of_one_reply_run_side_by_side(git_repo):
    both = threading.Barrier(2, timeout=10)

    def meet(text):
        def step(messages):
            both.wait()  # returns only once the sibling asks too: they run at once
            return text
        return step

    router = Router({
        "two things": [calls(("task", {"description": "a", "prompt": "look at A"}),
                             ("task", {"description": "b", "prompt": "look at B"})),
                       "both done."],
        "look at A": [meet("A is fine")],
        "look at B": [meet("B is fine")],
    })
    _, events = run(git_repo, router, [UserInput("two things"), Shutdown()])
    results = [r.content for r in of(events, ToolCallFinished)]
    assert results == ["A is fine", "B is fine"]  # in the calls' order
    assert of(events, TurnFinished)[-1].status == "done"


def test_interrupt_stops_the_subagent_and_a_restarted_parent_resumes_it(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    router = Router({
        "long job": [call("task", description="slow", prompt="count slowly")],
        "count slowly": ["one two three " * 200, "counted to three."],
        "go on": [lambda m: call("task", resume=_agent_id(m)), "it counted to three."],
    })

    def interrupt(session, e):
        if isinstance(e, Nested) and type(e.event).__name__ == "TokenDelta":
            session.submit(Interrupt())

    backend = ScriptedBackend([router] * 40, delay_s=0.01)
    session = AgentSession(backend, git_repo, store, options=SessionOptions(
        permission_mode="auto", loop=LoopConfig(max_steps=6)))
    session.submit(UserInput("long job"))
    events = _until(session, lambda e: isinstance(e, TurnFinished), interrupt)
    assert of(events, TurnFinished)[-1].status == "interrupted"
    sub = of(events, SubagentFinished)[0]
    assert sub.status == "interrupted"
    task = of(events, ToolCallFinished)[0]
    assert not task.ok and f'task(resume="{sub.agent_id}")' in task.content
    assert store.get(sub.agent_id).status == "interrupted"
    # after a restart, the resumed parent's next turn resumes it: it sees its own earlier
    # reply and answers
    session.submit(Shutdown())
    _until(session, lambda e: False)
    session = AgentSession(ScriptedBackend([router] * 40), git_repo, store,
                           resume_id=session.session_id,
                           options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("go on"))
    session.submit(Shutdown())
    events = _until(session, lambda e: False)
    assert of(events, ToolCallFinished)[0].content == "counted to three."
    resumed = of(events, SubagentStarted)[0]
    assert resumed.resumed and resumed.agent_id == sub.agent_id
    seen = router.seen["count slowly"][-1]
    assert seen[-2]["role"] == "assistant" and seen[-2]["content"].startswith("one two")
    assert store.get(sub.agent_id).status == "finished"


def test_a_parent_resumed_after_a_crash_is_told_what_its_subagents_did(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    router = Router({
        ASK: [call("task", description="find", prompt=WORK)],  # then the script runs out
        WORK: ["helper returns x + 1"],
    })
    session, events = run(git_repo, router, [UserInput(ASK), Shutdown()], store)
    assert of(events, SubagentFinished)[0].status == "done"
    assert not of(events, TurnFinished)  # the turn never finished: as after kill -9
    seen = []
    again = Router({"and now?": [lambda m: seen.extend(m) or "x + 1, as it found."]})
    _, events = run(git_repo, again, [UserInput("and now?"), Shutdown()], store,
                    resume_id=session.session_id)
    notes = [m["content"] for m in seen if "cut short" in m["content"]]
    assert len(notes) == 1 and "helper returns x + 1" in notes[0]
    assert of(events, TurnFinished)[-1].status == "done"


def test_resume_of_a_finished_subagent_gives_its_answer_again(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    router = Router({
        ASK: [call("task", description="find", prompt=WORK), "x + 1."],
        WORK: ["helper returns x + 1"],
        "again?": [lambda m: call("task", resume=_subagent_ids(store)[0]), "same."],
        "someone else's": [call("task", resume="20200101-000000-dead"), "no."],
    })
    session, _ = run(git_repo, router, [UserInput(ASK), UserInput("again?"),
                                        UserInput("someone else's"), Shutdown()], store)
    done = [e for e in store.events(session.session_id) if e.kind == "tool_finished"]
    assert done[1].payload["content"] == "helper returns x + 1"
    assert done[1].payload["metadata"]["reused"] is True
    assert not done[2].payload["ok"] and "no session" in done[2].payload["content"]


def _agent_id(messages) -> str:
    """The id a stopped sub-agent's result tells the model to resume."""
    for m in messages:
        if m["role"] == "tool" and 'task(resume="' in m["content"]:
            return m["content"].split('task(resume="')[1].split('"')[0]
    raise AssertionError("no resumable sub-agent in the context")


def _subagent_ids(store) -> list[str]:
    return [s.id for s in store.list_sessions(include_subagents=True) if s.is_subagent]


def _until(session, stop, on_event=None, timeout=30.0):
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        e = session.next_event(0.05)
        if e is None:
            if session.closed:
                return events
            continue
        events.append(e)
        if on_event:
            on_event(session, e)
        if stop(e):
            return events
    raise AssertionError(f"timed out: {events[-5:]}")


def test_the_stream_lines_of_a_subagent_follow_the_schema(git_repo):
    from tests.cli.stream_schema import VALIDATOR

    router = Router({
        ASK: [call("task", description="find helper", prompt=WORK), "it returns x + 1."],
        WORK: [call("read", path="src/util.py"), "helper returns x + 1"],
    })
    session, events = run(git_repo, router, [UserInput(ASK), Shutdown()])
    lines = [{**event_to_json(e), "session_id": session.session_id} for e in events]
    nested = [line for line in lines if "parent_call_id" in line]
    assert {"turn_started", "tool_started", "tool_finished", "turn_finished"} <= \
        {line["type"] for line in nested}
    for line in lines:
        errors = [e.message for e in VALIDATOR.iter_errors(line)]
        assert not errors, (line["type"], errors[:2])


def test_export_and_import_carry_the_subagents(git_repo, tmp_path):
    from memory.store.export import import_session

    store = SessionStore(tmp_path / "data")
    router = Router({
        ASK: [call("task", description="find helper", prompt=WORK), "x + 1."],
        WORK: ["helper returns x + 1"],
    })
    session, events = run(git_repo, router, [UserInput(ASK), Shutdown()], store)
    data = store.export(session.session_id)
    (child,) = data["subagents"]
    assert child["session"]["parent_call_id"] == "call_1"
    shared = of(events, SubagentStarted)[0].shared_tokens
    other = SessionStore(tmp_path / "other")
    copy = import_session(other, json.loads(json.dumps(data)))
    (imported,) = other.subagents(copy.id)
    assert (imported.parent_call_id, imported.fork_turn) == ("call_1", 1)
    assert other.token_log(imported.id) == store.token_log(child["session"]["id"])
    assert shared > 0


def test_the_chain_policy_spells_out_a_task_call_when_asked_for_a_subagent(git_repo):
    from agent.tool_policy import ToolPolicy
    from agent.tools import default_tools
    from agent.tools.task import TaskTool

    schemas = [t.schema() for t in [*default_tools(), TaskTool()]]
    policy = ToolPolicy("chain", schemas, git_repo)
    policy.start_turn("Use a sub-agent to read src/util.py and say what helper returns.")
    first = policy.choose(0, False)
    assert first.tool_choice == "required" and [s["function"]["name"] for s in first.schemas] \
        == ["task"]
    prompt = first.schemas[0]["function"]["parameters"]["properties"]["prompt"]
    assert prompt["const"] == "Read src/util.py and say what helper returns."
    assert policy.choose(1, False).tool_choice == "none"
    policy.start_turn("what does helper return?")  # no sub-agent asked for: explore
    assert "task" not in [s["function"]["name"] for s in policy.choose(0, False).schemas]
    policy.start_turn("Read src/util.py and say what helper returns.")  # read, as asked
    assert [s["function"]["name"] for s in policy.choose(0, False).schemas] == ["read"]
    without = ToolPolicy("chain", [t.schema() for t in default_tools()], git_repo)
    without.start_turn("Use a sub-agent to read src/util.py.")
    assert "task" not in [s["function"]["name"] for s in without.choose(0, False).schemas]


def test_deleting_a_session_deletes_its_subagents(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    router = Router({ASK: [call("task", description="f", prompt=WORK), "x + 1."],
                     WORK: ["helper returns x + 1"]})
    session, events = run(git_repo, router, [UserInput(ASK), Shutdown()], store)
    child = of(events, SubagentStarted)[0].agent_id
    fork = store.fork(session.session_id)  # a plain fork outlives its parent
    store.delete(session.session_id)
    assert [s.id for s in store.list_sessions(include_subagents=True)] == [fork.id]
    assert store.get(fork.id).parent_id is None
    assert child not in [s.id for s in store.list_sessions(include_subagents=True)]


def test_an_openai_fork_answers_the_open_calls_and_leaves_the_parent_alone():
    from agent.backends.openai_compat import OpenAIConversation

    conv = OpenAIConversation(backend=None)
    conv.messages = [{"role": "user", "content": "go"},
                     {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}]
    conv._open_calls = ["c1"]
    child = conv.fork()
    assert child.messages[:2] == conv.messages and len(conv.messages) == 2
    assert child.messages[2]["role"] == "tool" and child.messages[2]["tool_call_id"] == "c1"
    assert conv._open_calls == ["c1"] and child._open_calls == []


def test_a_fork_that_fails_is_the_calls_error_and_leaves_its_session_closed(
        git_repo, tmp_path, monkeypatch):
    from agent.backends.scripted import ScriptedConversation

    def no_pages(self):
        raise RuntimeError("the device KV pool is full")

    monkeypatch.setattr(ScriptedConversation, "fork", no_pages)
    store = SessionStore(tmp_path / "data")
    router = Router({ASK: [call("task", description="f", prompt=WORK), "could not."]})
    session, events = run(git_repo, router, [UserInput(ASK), Shutdown()], store)
    task = of(events, ToolCallFinished)[0]
    assert not task.ok and "could not start" in task.content and "KV pool" in task.content
    (child,) = store.subagents(session.session_id)
    assert child.status == "error"
    assert of(events, TurnFinished)[-1].status == "done"
