"""The session's side of the `task` tool: `SubagentHost` starts, runs, records and resumes
sub-agents.

A new sub-agent forks the parent's conversation at the task call: the parent's tokens up to
and including the reply that made the call, then its own first message and prompt appended
as the template's delta. In the store it is a fork of the parent session through the current
turn (`parent_id`, `fork_turn`, `parent_call_id`), so its log is self-contained and resumable;
its own turns come after the fork turn. When it ends its KV pages are released (sealed pages
stay cached in the tiers, which is what a resume restores them from).

Resume: `task(resume=ID)` goes on with a sub-agent that stopped before its answer (a
finished one gives its answer again without running). A parent resumed after a crash that
cut a turn short is told, in a note with its next turn, what the sub-agents of that turn
found and which can be resumed.
"""

from __future__ import annotations

import time
from typing import Any

from agent.events import SubagentFinished, SubagentStarted, TurnFinished, event_to_json
from agent.history import conversation_state, finished_turns, recorded
from agent.subagent import CONTINUE, Parent, Subagent, TaskSpec, task_result
from agent.subagent_pool import run_all
from agent.tools.base import ToolResult
from agent.tools.task import TaskArgs
from memory.store import StoreError

STATUS_OF = {"done": "finished", "context_full": "finished", "error": "error"}
NOTE_CHARS = 2000  # of each finished sub-agent's answer in a resumed parent's note


class Refused(Exception):
    """A task call that starts nothing; its message is the call's result."""


class SubagentHost:
    """Runs task calls for one session (bound to it when it opens). `limit` caps how many run
    at once (None: agent/subagent_pool.py decides by device)."""

    def __init__(self, limit: int | None = None):
        self.session: Any = None
        self.limit = limit

    def bind(self, session: Any) -> None:
        self.session = session

    # -- task calls ---------------------------------------------------------------------------

    def run(self, calls: list[tuple[str, TaskArgs]]) -> list[ToolResult]:
        """Start each call's sub-agent, run them (side by side where they can), finish each."""
        results: list[ToolResult | None] = [None] * len(calls)
        started: list[tuple[int, Subagent]] = []
        try:
            for i, (call_id, args) in enumerate(calls):
                try:
                    child = self._resume(call_id, args) if args.resume else \
                        self._fork(call_id, args)
                except Refused as e:
                    results[i] = ToolResult.fail(str(e))
                    continue
                if isinstance(child, ToolResult):
                    results[i] = child
                else:
                    started.append((i, child))
            outcomes = run_all(self.session.loop.conv, [c.conv for _, c in started],
                               [c.run for _, c in started], self.limit) if started else []
            for (i, child), finished in zip(started, outcomes, strict=True):
                results[i] = self._finish(child, finished)
        finally:
            for i, child in started:
                if results[i] is None:  # the run itself failed: give the child back
                    self._close(child, "error")
        return results  # type: ignore[return-value]

    def _parent(self) -> Parent:
        s = self.session
        return Parent(s.session_id, s.turn, s.store, [t for t in s.tools if t.name != "task"],
                      s.ctx, s.permissions, s.options.loop, s.backend.context_window,
                      s.backend.default_tool_choice, s._events.put, self._approve)

    def _spec(self, call_id: str, args: TaskArgs, parent: Parent) -> TaskSpec:
        have = [t.name for t in parent.tools]
        tools = have if args.tools is None else args.tools
        unknown = [t for t in tools if t not in have]
        if unknown:
            raise Refused(f"task: no tool {', '.join(map(repr, unknown))} for a sub-agent; "
                          f"choose from {', '.join(have)}")
        return TaskSpec(call_id, args.description.strip(), args.prompt.strip(), tuple(tools),
                        args.max_steps or parent.config.max_steps)

    def _fork(self, call_id: str, args: TaskArgs) -> Subagent:
        parent = self._parent()
        spec = self._spec(call_id, args, parent)
        info = parent.store.fork(parent.session_id, parent.turn, call_id, spec.description)
        parent.store.acquire_lock(info.id)
        start = time.perf_counter()
        try:
            conv = self.session.loop.conv.fork()
        except Exception as e:  # e.g. no device pages left for the partial page's copy
            parent.store.set_status(info.id, "error")
            parent.store.release_lock(info.id)
            raise Refused(f"task: the sub-agent could not start: {e}") from e
        fork_ms = (time.perf_counter() - start) * 1000
        shared = conv.context_tokens
        started = spec.started(info.id, shared, fork_ms)
        self._record_start(info.id, parent.turn, started)
        return Subagent(parent, spec, info.id, conv, parent.turn + 1, started, spec.prompt,
                        Subagent.first_message(spec))

    def _record_start(self, agent_id: str, fork_turn: int, started) -> None:
        """In the parent's stream and log, and in the sub-agent's own (what a resume reads)."""
        self.session._emit(started)
        payload = event_to_json(started)
        del payload["type"]
        self.session.store.append_event(agent_id, fork_turn, "subagent_started", payload)

    def _finish(self, child: Subagent, finished: TurnFinished) -> ToolResult:
        shared = child.started.shared_tokens
        self.session._emit(SubagentFinished(
            child.spec.call_id, child.agent_id, finished.status, finished.text, finished.steps,
            shared, finished.usage, finished.duration_ms, finished.time_to_first_token_ms))
        self._close(child, STATUS_OF.get(finished.status, "interrupted"))
        return task_result(child.spec, child.agent_id, finished, shared)

    def _close(self, child: Subagent, status: str) -> None:
        """The sub-agent's pages go back (sealed ones stay cached) and its session is left."""
        try:
            child.conv.close()
        finally:
            store = self.session.store
            store.set_status(child.agent_id, status)
            store.release_lock(child.agent_id)

    def _approve(self, request, shown):
        """One sub-agent asks at a time (the front end answers one call at a time)."""
        with self.session.approval_lock:
            return self.session._approve(request, shown)

    # -- resume -------------------------------------------------------------------------------

    def _resume(self, call_id: str, args: TaskArgs) -> Subagent | ToolResult:
        parent, store = self._parent(), self.session.store
        info = self._own_subagent(args.resume)
        events = recorded(store.events(info.id, include_superseded=True))
        first = next((e for _, e in events
                      if isinstance(e, SubagentStarted) and e.agent_id == info.id), None)
        if first is None:
            raise Refused(f"task: sub-agent {info.id} has no record of its start; start a new one")
        spec = self._spec(call_id, TaskArgs(description=first.description, prompt=first.prompt,
                                            tools=first.tools, max_steps=first.max_steps),
                          parent)
        live = recorded(store.events(info.id))
        own = [t for t in finished_turns(live) if t > info.fork_turn]
        if info.status == "finished":
            return self._answer_again(info.id, live)
        try:
            store.acquire_lock(info.id)
        except StoreError as e:
            raise Refused(f"task: {e}") from None
        last = max(own, default=info.fork_turn)
        if store.get(info.id).turn_count > last:  # cut short: back to where it was whole
            store.truncate_to_turn(info.id, last)
        state = conversation_state(store, info.id)
        del state["has_system"]
        conv = self.session.backend.conversation([t.schema() for t in self.session.tools],
                                                 restore=state)
        shared = _fork_tokens(store, info.id, info.fork_turn)
        started = spec.started(info.id, shared, resumed=True)
        self.session._emit(started)
        store.set_status(info.id, "active")
        text, preamble = (CONTINUE, None) if own else (spec.prompt, Subagent.first_message(spec))
        return Subagent(parent, spec, info.id, conv, last + 1, started, text, preamble)

    def _own_subagent(self, agent_id: str | None):
        try:
            info = self.session.store.get(agent_id or "")
        except StoreError as e:
            raise Refused(f"task: {e}") from None
        if info.parent_id != self.session.session_id or not info.is_subagent:
            raise Refused(f"task: {info.id} is not a sub-agent of this session")
        return info

    def _answer_again(self, agent_id: str, live) -> ToolResult:
        done = [e for _, e in live if isinstance(e, TurnFinished)]
        text = done[-1].text.strip() if done else ""
        return ToolResult(True, text or "(the sub-agent ended without an answer)",
                          metadata={"agent_id": agent_id, "status": "done", "reused": True})

    # -- a parent resumed ---------------------------------------------------------------------

    def note_on_resume(self, turn: int) -> str | None:
        """After a crash rewound the parent to `turn`: what its later turns' sub-agents did
        (their answers never reached the context), or None when there were none."""
        store, sid = self.session.store, self.session.session_id
        lost = [s for s in store.subagents(sid) if (s.fork_turn or 0) > turn]
        if not lost:
            return None
        lines = ["Sub-agents of a turn that was cut short (their results did not reach you):"]
        for info in lost:
            live = recorded(store.events(info.id))
            if info.status == "finished":
                answer = self._answer_again(info.id, live).content[:NOTE_CHARS]
                lines.append(f'- {info.id} "{info.title}": finished; its answer:\n{answer}')
            else:
                lines.append(f'- {info.id} "{info.title}": stopped ({info.status}); go on '
                             f'with it with task(resume="{info.id}")')
        return "\n".join(lines)


def _fork_tokens(store, agent_id: str, fork_turn: int | None) -> int:
    """Tokens a sub-agent's log shares with its parent: those through the fork turn."""
    return sum(s.n_tokens for s in store.segments(agent_id, with_ids=False)
               if fork_turn is None or s.turn <= fork_turn)
