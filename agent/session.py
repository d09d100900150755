"""A running agent session: a worker thread between an op queue and an event queue.

The session owns the conversation, the tools, the permissions and the store record. Every
front end (TUI, headless run, tests) drives it through `AgentHandle`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends.base import AppendCancelled, ModelBackend
from agent.context import system_message
from agent.events import (
    RECORD_ONLY,
    RECORDED,
    ApprovalDecision,
    ApprovalRequested,
    Error,
    Event,
    Interrupt,
    KVStats,
    MessageAdded,
    Note,
    Op,
    Progress,
    SessionStarted,
    Shutdown,
    TurnStarted,
    UserInput,
    event_name,
    event_to_json,
)
from agent.external_changes import ExternalChanges
from agent.handle import QueuedHandle
from agent.history import conversation_state, finished_turns, recorded, replay
from agent.loop import AgentLoop, LoopConfig, StoreRecorder
from agent.permissions import Permissions
from agent.repo_snapshot import take_snapshot
from agent.subagents import SubagentHost
from agent.tools import default_tools
from agent.tools.base import ToolContext
from agent.tools.processes import ProcessLimits
from agent.tools.task import TaskTool
from agent.workspace import Workspace
from memory.store import NullStore, StoreError

log = logging.getLogger(__name__)


@dataclass
class SessionOptions:
    """How a session runs; the CLI and the TUI fill it from flags."""

    permission_mode: str = "ask"
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    loop: LoopConfig = LoopConfig()
    snapshot_fraction: float = 0.5  # of the context window, for the repository snapshot
    task: str = ""  # the first prompt when known at start: the snapshot puts its files first
    title: str | None = None
    replay_history: bool = False  # a resumed session first re-emits its earlier turns (TUI)
    pass_env: list[str] = field(default_factory=list)  # names commands get besides the allowlist
    process_limits: ProcessLimits | None = None  # rlimits of commands (None: the defaults)
    subagents: bool = True  # the task tool (sub-agents forked from the session's context)
    subagent_limit: int | None = None  # at once; None: by device (agent/subagent_pool.py)


def snapshot_budget(window: int, reply_room: int, fixed: int, fraction: float = 0.5) -> int:
    """Tokens the repository snapshot may take: `fraction` of the window (at most half for
    windows up to 32K), never eating into the reply room or a quarter of the window kept for
    the conversation; `fixed` is what the system message takes without it."""
    share = min(fraction, 0.5) if window <= 32768 else fraction
    return max(0, min(int(window * share), window - reply_room - fixed - window // 4))


class SessionMismatch(Exception):
    """A saved session's token log belongs to another model: it cannot be resumed on this one."""


@dataclass
class _Rewind:
    """An internal op: rewind to the start of `turn`, then signal `done`."""

    turn: int
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class AgentSession(QueuedHandle):
    """Runs the loop on a worker thread; `submit` and `next_event` never block on the model.

    Every event goes through `_emit`: recorded in the store when it is one of `RECORDED`, and
    queued for the front end unless it is record-only. Without a store the session records
    into a NullStore. A resumed session is rebuilt from the token log (what the model saw) and
    the recorded events (its messages and history)."""

    def __init__(self, backend: ModelBackend, repo_root: Path, store=None,
                 resume_id: str | None = None, options: SessionOptions | None = None):
        super().__init__()
        self.backend = backend
        self.options = options or SessionOptions()
        self.workspace = Workspace(repo_root)
        self.tools = default_tools(limits=self.options.process_limits,
                                   pass_env=tuple(self.options.pass_env))
        self.subagents = SubagentHost(self.options.subagent_limit)
        self.subagents.bind(self)
        if self.options.subagents:
            self.tools.append(TaskTool(self.subagents))
        self.approval_lock = threading.Lock()  # sub-agents side by side ask one at a time
        self._subagent_note: str | None = None
        self.ctx = ToolContext(self.workspace)
        self.permissions = Permissions(self.options.permission_mode, allow=self.options.allow,
                                       deny=self.options.deny, tools=self.tools,
                                       root=self.workspace.root)
        self.ctx.read_policy = self.permissions  # read deny rules hold in grep and git too
        self.store = store if store is not None else NullStore()
        self.resume_id = resume_id
        self.session_id = ""
        self.turn = 0
        self.last_status = ""
        self._locked = False
        self._announced = False
        self._stopping = False
        self._pending: list[UserInput] = []
        self.loop: AgentLoop | None = None
        self._thread = threading.Thread(target=self._main, name="agent-session", daemon=True)
        self._thread.start()

    # -- AgentHandle -------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        if isinstance(op, Interrupt):
            self.ctx.cancel.set()  # reach a running turn at once, not after it ends
        super().submit(op)

    def stop(self) -> None:
        """Interrupt the running turn and start no other: queued input is dropped, the turn
        keeps what it had, and the session closes at the Shutdown queued (Ctrl-C or SIGTERM in
        `agent run`). Takes no queue lock, so a signal handler may call it."""
        self._stopping = True
        self.ctx.cancel.set()

    @property
    def stopping(self) -> bool:
        """`stop` was called: no further turn will start."""
        return self._stopping

    def _emit(self, event: Event) -> None:
        if self.session_id and isinstance(event, RECORDED):
            payload = event_to_json(event)
            del payload["type"]
            self.store.append_event(self.session_id, self.turn, event_name(type(event)), payload)
        if not isinstance(event, RECORD_ONLY):
            self._events.put(event)

    # -- worker ------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._open()
            while self._serve_one():
                pass
        except (StoreError, SessionMismatch) as e:  # one line that names the fix
            self._events.put(Error(str(e), fatal=True))
        except AppendCancelled:
            self.last_status = "interrupted"
            self._events.put(Error("interrupted while reading the repository", fatal=True))
        except Exception as e:  # the loop's own failure: tell the front end, keep the trace
            log.warning("session failed", exc_info=True)
            self.last_status = "error"
            self._events.put(Error(f"{type(e).__name__}: {e}", fatal=True))
        finally:
            self._close()

    def _serve_one(self) -> bool:
        op = self._pending.pop(0) if self._pending else self._ops.get()
        if isinstance(op, Shutdown):
            return False
        if isinstance(op, UserInput):
            self.loop.cancel.clear()  # an interrupt between turns is spent; `stop` is not
            if not self._stopping:
                self._run_turn(op.text)
        if isinstance(op, _Rewind):
            self._rewind(op)
        return True  # a stray approval or interrupt between turns

    def _run_turn(self, text: str) -> None:
        self.turn += 1
        if self.turn == 1 and not self.options.title:  # every session is named by its start
            self.store.set_title(self.session_id, " ".join(text.split())[:80] or None)
        self._checkpoint()
        preamble = self._outside_changes()
        self.watcher.turn_started()
        try:
            self.last_status = self.loop.run_turn(self.turn, text, preamble).status
        finally:
            self.watcher.turn_finished()
            self.backend.flush()
            self._report_kv()

    def rewind(self, turn: int, timeout: float = 60.0) -> None:
        """Restore code and conversation to the start of `turn` (between turns only)."""
        op = _Rewind(turn)
        self._ops.put(op)
        if not op.done.wait(timeout):
            raise TimeoutError("rewind did not finish; is a turn still running?")
        if op.error:
            raise op.error

    def _rewind(self, op: _Rewind) -> None:
        try:
            started = {turn for turn, e in self._recorded() if isinstance(e, TurnStarted)}
            if op.turn not in started:
                raise ValueError(f"no record of turn {op.turn} in this session")
            from agent.checkpoint import Checkpoints

            Checkpoints(self.workspace.root, self.session_id).restore(op.turn)
            self.store.truncate_to_turn(self.session_id, op.turn - 1)
            state = self._state_from_store()
            del state["has_system"]
            self.loop.conv.truncate({**state, "tokens": len(state["tokens"]),
                                     "messages": len(state["messages"])})
            self.turn = op.turn - 1
            self.watcher.mark_seen()
        except Exception as e:  # reported to the caller, the session goes on
            op.error = e
        finally:
            op.done.set()

    def context_breakdown(self) -> dict[str, int]:
        """Tokens of the resident context by segment kind (system and repository, user, ...)."""
        out: dict[str, int] = {}
        for seg in self.store.segments(self.session_id, with_ids=False):
            out[seg.kind] = out.get(seg.kind, 0) + seg.n_tokens
        return out or {"total": self.loop.conv.context_tokens if self.loop else 0}

    def _open(self) -> None:
        schemas = [t.schema() for t in self.tools]
        restore = self._resume() if self.resume_id else None
        conv = self.backend.conversation(schemas, restore=restore)
        if restore is not None:
            n = len(restore["tokens"])
            self._events.put(Progress("restore", n, n, "tokens"))
        self.loop = AgentLoop(conv, self.tools, self.ctx, self.permissions, self._emit,
                              self._approve, StoreRecorder(self.store, self.session_id),
                              self.options.loop, self.backend.context_window,
                              self.backend.default_tool_choice)
        if restore is None:
            self._start_new(conv, schemas)
        self.watcher = ExternalChanges(self.workspace.root, self.session_id or "unsaved",
                                       read_policy=self.permissions)
        self.watcher.start(resumed=restore is not None)
        if restore is not None and self.options.replay_history:
            for event in replay(self._recorded()):
                self._events.put(event)

    def _start_new(self, conv, schemas) -> None:
        if not self.session_id:
            info = self.store.create_session(str(self.workspace.root), self.backend.name,
                                             self.backend.fingerprint, self.options.title)
            self.session_id = self.loop.recorder.session_id = info.id
            self._locked = True
        self._announce(resumed=False)
        snapshot = self._snapshot(schemas)
        for entry in snapshot.whole():  # the model has seen these: edits need no re-read
            path = self.workspace.root / entry.path
            self.ctx.files.record(path.resolve(), path.read_bytes())
        system = system_message(schemas, snapshot, self.backend.template_supports_tools())
        appended = conv.append([system], generation_prompt=False, cancel=self.ctx.cancel,
                               progress=lambda d, t: self._events.put(Progress("ingest", d, t)))
        conv.carried = appended
        self._events.put(Progress("ingest", appended.new_tokens, appended.new_tokens))
        self._emit(MessageAdded(0, "system", system["content"]))
        self._emit(snapshot.event())
        self.store.append_tokens(self.session_id, 0, "system", appended.ids, appended.text)

    def _snapshot(self, schemas):
        """The repository within its budget: a share of the window that leaves the reply room
        and some conversation. The snapshot is measured as rendered (its list of left-out
        files included) and taken again smaller while it is over."""
        count = self.backend.count_tokens
        fixed = count(system_message(schemas, None,
                                     self.backend.template_supports_tools())["content"])
        target = snapshot_budget(self.backend.context_window, self.loop.reply_room, fixed,
                                 self.options.snapshot_fraction)
        budget = target
        while True:
            snapshot = take_snapshot(self.workspace.root, count, budget, task=self.options.task,
                                     may_read=self.permissions.may_read)
            size = count(snapshot.text or "")
            if size <= target or budget == 0:
                return snapshot
            budget = max(0, budget - (size - target) - 64)

    def _resume(self) -> dict[str, Any] | None:
        """Take the session (one writer), mark a crashed run, and rebuild its state; None when
        it has no system segment yet (killed before one): then it is started afresh."""
        info = self.store.get(self.resume_id)
        if info.model_fingerprint != self.backend.fingerprint:
            raise SessionMismatch(f"session {info.id} was made with model {info.model} (other "
                                  f"weights or settings); resume it with --model {info.model}")
        self.session_id = info.id
        self.store.acquire_lock(info.id)
        self._locked = True
        self._announce(resumed=True)
        if info.status == "crashed":
            self.store.set_status(info.id, "crashed")
            self._events.put(Note("the last run of this session ended without closing it "
                                  "(killed or crashed); resuming from what was recorded"))
        self.store.set_status(info.id, "active")
        self.turn = self._drop_unfinished_turn(info.turn_count)
        self._subagent_note = self.subagents.note_on_resume(self.turn)
        state = self._state_from_store()
        if not state.pop("has_system"):
            self.store.truncate_to_turn(info.id, 0)
            self._events.put(Note("this session has no system message yet; starting it again"))
            self.turn = 0
            return None
        self._events.put(Progress("restore", 0, len(state["tokens"]), "tokens"))
        return state

    def _announce(self, resumed: bool) -> None:
        """SessionStarted, once, as soon as the session has its id: before the repository is
        read or the KV restored, so every later event belongs to a known session."""
        if self._announced:
            return
        self._announced = True
        self._events.put(SessionStarted(self.session_id, self.backend.name,
                                        str(self.workspace.root), resumed,
                                        self.backend.context_window,
                                        [t.name for t in self.tools],
                                        self.permissions.mode, self.backend.memory_plan()))

    def _recorded(self):
        return recorded(self.store.events(self.session_id))

    def _state_from_store(self) -> dict[str, Any]:
        return conversation_state(self.store, self.session_id)

    def _report_kv(self) -> None:
        pages = self.backend.kv_pages()
        if pages:
            self._events.put(KVStats(pages["device"], pages["host"], pages["disk"],
                                     pages["page_size"]))

    def _outside_changes(self) -> list[dict]:
        """Notes for the next turn: files changed outside the agent, and (once, after a
        crash) what the sub-agents of the turn cut short did."""
        notes = [n for n in (self.watcher.note(), self._subagent_note) if n]
        self._subagent_note = None
        for note in notes:
            self._emit(Note(note))
        return [{"role": "user", "content": note} for note in notes]

    def _drop_unfinished_turn(self, turn_count: int) -> int:
        """A turn cut short (kill -9, power loss) is rewound: the log resumes where it is whole.

        Its events stay in the store, superseded; the files it changed are left as they are and
        show up in the next turn's note of outside changes."""
        last = max(finished_turns(self._recorded()), default=0)
        if turn_count > last:
            self.store.truncate_to_turn(self.session_id, last)
            self._events.put(Note(f"turn {turn_count} was cut short; resuming after turn {last}"))
        return last

    def _checkpoint(self) -> None:
        if not self.store.durable:  # nothing would remember the checkpoint
            return
        try:
            from agent.checkpoint import Checkpoints

            mark = Checkpoints(self.workspace.root, self.session_id).create(self.turn)
            self.store.add_checkpoint(self.session_id, self.turn, mark.commit, mark.ref)
        except Exception as e:  # a repository without git still gets an agent
            log.info("no checkpoint for turn %d: %s", self.turn, e)

    def _approve(self, request: ApprovalRequested, shown: Event | None = None
                 ) -> ApprovalDecision:
        """Ask the front end and wait; other input is queued, an interrupt denies. `shown`
        is what the front end sees of the request (a sub-agent's, nested)."""
        self._events.put(shown or request)
        while True:
            op = self._ops.get()
            if isinstance(op, ApprovalDecision) and op.call_id == request.call_id:
                return op
            if isinstance(op, Interrupt):
                return ApprovalDecision(request.call_id, "deny")
            if isinstance(op, UserInput | Shutdown):  # after this turn, in order
                self._pending.append(op)

    def _close(self) -> None:
        try:
            for tool in self.tools:
                tool.close()
            if getattr(self, "watcher", None):
                self.watcher.stop()
            self.backend.flush()
            if self.loop is not None:  # its pages go back to the pool (cached, not held)
                self.loop.conv.close()
            if self._locked:
                status = self.last_status if self.last_status in ("interrupted", "error") \
                    else "finished"
                self.store.set_status(self.session_id, status)
                self.store.release_lock(self.session_id)
        except Exception:
            log.warning("session close failed", exc_info=True)
        self._closed.set()
