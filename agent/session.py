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

from agent.backends.base import ModelBackend
from agent.context import system_message
from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Error,
    Interrupt,
    KVStats,
    Note,
    Op,
    Progress,
    SessionStarted,
    Shutdown,
    UserInput,
)
from agent.external_changes import ExternalChanges
from agent.handle import QueuedHandle
from agent.history import replay
from agent.loop import AgentLoop, LoopConfig, NullRecorder, Recorder
from agent.permissions import Permissions
from agent.repo_snapshot import take_snapshot
from agent.tools import default_tools
from agent.tools.base import ToolContext
from agent.tools.processes import ProcessLimits
from agent.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class SessionOptions:
    """How a session runs; the CLI and the TUI fill it from flags."""

    permission_mode: str = "ask"
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    loop: LoopConfig = LoopConfig()
    snapshot_fraction: float = 0.5  # of the context window, for the repository snapshot
    title: str | None = None
    replay_history: bool = False  # a resumed session first re-emits its earlier turns (TUI)
    pass_env: list[str] = field(default_factory=list)  # names commands get besides the allowlist
    process_limits: ProcessLimits | None = None  # rlimits of commands (None: the defaults)


class SessionMismatch(Exception):
    """A saved session's token log belongs to another model: it cannot be resumed on this one."""


@dataclass
class _Rewind:
    """An internal op: rewind to the start of `turn`, then signal `done`."""

    turn: int
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class StoreRecorder(Recorder):
    """Writes the loop's events and token segments into the session store."""

    def __init__(self, store, session_id: str):
        self.store = store
        self.session_id = session_id

    def event(self, turn: int, kind: str, payload: dict[str, Any]) -> None:
        self.store.append_event(self.session_id, turn, kind, payload)

    def tokens(self, turn: int, kind: str, ids: list[int], text: str) -> None:
        self.store.append_tokens(self.session_id, turn, kind, ids, text)


class AgentSession(QueuedHandle):
    """Runs the loop on a worker thread; `submit` and `next_event` never block on the model."""

    def __init__(self, backend: ModelBackend, repo_root: Path, store=None,
                 resume_id: str | None = None, options: SessionOptions | None = None):
        super().__init__()
        self.backend = backend
        self.options = options or SessionOptions()
        self.workspace = Workspace(repo_root)
        self.tools = default_tools(limits=self.options.process_limits,
                                   pass_env=tuple(self.options.pass_env))
        self.ctx = ToolContext(self.workspace)
        self.permissions = Permissions(self.options.permission_mode, allow=self.options.allow,
                                       deny=self.options.deny, tools=self.tools,
                                       root=self.workspace.root)
        self.ctx.read_policy = self.permissions  # read deny rules hold in grep and git too
        self.store = store
        self.resume_id = resume_id
        self.session_id = resume_id or ""
        self.turn = 0
        self._pending: list[UserInput] = []
        self.loop: AgentLoop | None = None
        self._thread = threading.Thread(target=self._main, name="agent-session", daemon=True)
        self._thread.start()

    # -- AgentHandle -------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        if isinstance(op, Interrupt):
            self.ctx.cancel.set()  # reach a running turn at once, not after it ends
        super().submit(op)

    # -- worker ------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._open()
            while self._serve_one():
                pass
        except Exception as e:  # the loop's own failure: tell the front end, keep the trace
            log.warning("session failed", exc_info=True)
            self._events.put(Error(f"{type(e).__name__}: {e}", fatal=True))
        finally:
            self._close()

    def _serve_one(self) -> bool:
        op = self._pending.pop(0) if self._pending else self._ops.get()
        if isinstance(op, Shutdown):
            return False
        if isinstance(op, UserInput):
            self.turn += 1
            self._checkpoint()
            if self.store:  # where the conversation stood, for a later rewind
                self.store.append_event(self.session_id, self.turn, "mark", self.loop.conv.mark())
            preamble = self._outside_changes()
            self.watcher.turn_started()
            try:
                self.loop.run_turn(self.turn, op.text, preamble)
            finally:
                self.watcher.turn_finished()
                self.backend.flush()
                self._report_kv()
        if isinstance(op, _Rewind):
            self._rewind(op)
        return True  # a stray approval or interrupt between turns

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
            marks = {e.turn: e.payload for e in self.store.events(self.session_id)
                     if e.kind == "mark"} if self.store else {}
            if op.turn not in marks:
                raise ValueError(f"no record of turn {op.turn} in this session")
            from agent.checkpoint import Checkpoints

            Checkpoints(self.workspace.root, self.session_id).restore(op.turn)
            self.store.truncate_to_turn(self.session_id, op.turn - 1)
            self.loop.conv.truncate(marks[op.turn])
            self.turn = op.turn - 1
            self.watcher.mark_seen()
        except Exception as e:  # reported to the caller, the session goes on
            op.error = e
        finally:
            op.done.set()

    def context_breakdown(self) -> dict[str, int]:
        """Tokens of the resident context by segment kind (system and repository, user, ...)."""
        if not self.store or not self.session_id:
            return {"total": self.loop.conv.context_tokens if self.loop else 0}
        out: dict[str, int] = {}
        for seg in self.store.segments(self.session_id, with_ids=False):
            out[seg.kind] = out.get(seg.kind, 0) + seg.n_tokens
        return out

    def _open(self) -> None:
        schemas = [t.schema() for t in self.tools]
        restore = self._restore_state() if self.resume_id else None
        conv = self.backend.conversation(schemas, restore=restore)
        if restore is not None:
            n = len(restore["tokens"])
            self._events.put(Progress("restore", n, n, "tokens"))
        if restore is None:
            self._start_new(conv, schemas)
        recorder = StoreRecorder(self.store, self.session_id) if self.store else NullRecorder()
        self.loop = AgentLoop(conv, self.tools, self.ctx, self.permissions, self._events.put,
                              self._approve, recorder, self.options.loop,
                              self.backend.context_window, self.backend.default_tool_choice)
        self.watcher = ExternalChanges(self.workspace.root, self.session_id or "unsaved",
                                       read_policy=self.permissions)
        self.watcher.start(resumed=restore is not None)
        self._events.put(SessionStarted(self.session_id, self.backend.name,
                                        str(self.workspace.root), restore is not None,
                                        self.backend.context_window))
        if restore is not None and self.options.replay_history:
            for event in replay(self.store.events(self.session_id)):
                self._events.put(event)

    def _start_new(self, conv, schemas) -> None:
        if self.store:
            info = self.store.create_session(str(self.workspace.root), self.backend.name,
                                             self.backend.fingerprint, self.options.title)
            self.session_id = info.id
        budget = int(self.backend.context_window * self.options.snapshot_fraction)
        snapshot = take_snapshot(self.workspace.root, self.backend.count_tokens, budget,
                                 may_read=self.permissions.may_read)
        for entry in snapshot.included:  # the model has seen these: edits need no re-read
            path = self.workspace.root / entry.path
            self.ctx.files.record(path.resolve(), path.read_bytes())
        system = system_message(schemas, snapshot, self.backend.template_supports_tools())
        appended = conv.append([system], generation_prompt=False,
                               progress=lambda d, t: self._events.put(Progress("ingest", d, t)))
        conv.carried = appended
        self._events.put(Progress("ingest", appended.new_tokens, appended.new_tokens))
        if self.store:
            self.store.append_event(self.session_id, 0, "message", system)
            self.store.append_event(self.session_id, 0, "note", {"text": snapshot.report()})
            self.store.append_tokens(self.session_id, 0, "system", appended.ids, appended.text)

    def _restore_state(self) -> dict[str, Any]:
        info = self.store.get(self.resume_id)
        if info.model_fingerprint != self.backend.fingerprint:
            raise SessionMismatch(f"session {info.id} was made with model {info.model} (other "
                                  f"weights or settings); resume it with --model {info.model}")
        self.session_id = info.id
        self.turn = self._drop_unfinished_turn(info.turn_count)
        segments = self.store.segments(self.session_id)
        messages = [e.payload for e in self.store.events(self.session_id) if e.kind == "message"]
        text = "".join(s.text or "" for s in segments)
        tokens = self.store.token_log(self.session_id)
        self._events.put(Progress("restore", 0, len(tokens), "tokens"))
        return {"messages": messages, "text": text, "tokens": tokens}

    def _report_kv(self) -> None:
        pages = self.backend.kv_pages()
        if pages:
            self._events.put(KVStats(pages["device"], pages["host"], pages["disk"],
                                     pages["page_size"]))

    def _outside_changes(self) -> list[dict]:
        note = self.watcher.note()
        if not note:
            return []
        self._events.put(Note(note))
        return [{"role": "user", "content": note}]

    def _drop_unfinished_turn(self, turn_count: int) -> int:
        """A turn cut short (kill -9, power loss) is rewound: the log resumes where it is whole.

        Its events stay in the store, superseded; the files it changed are left as they are and
        show up in the next turn's note of outside changes."""
        done = [e.turn for e in self.store.events(self.session_id) if e.kind == "usage"]
        last = max(done, default=0)
        if turn_count > last:
            self.store.truncate_to_turn(self.session_id, last)
            self._events.put(Note(f"turn {turn_count} was cut short; resuming after turn {last}"))
        return last

    def _checkpoint(self) -> None:
        if not self.store:
            return
        try:
            from agent.checkpoint import Checkpoints

            mark = Checkpoints(self.workspace.root, self.session_id).create(self.turn)
            self.store.add_checkpoint(self.session_id, self.turn, mark.commit, mark.ref)
        except Exception as e:  # a repository without git still gets an agent
            log.info("no checkpoint for turn %d: %s", self.turn, e)

    def _approve(self, request: ApprovalRequested) -> ApprovalDecision:
        """Ask the front end and wait; other input is queued, an interrupt denies."""
        self._events.put(request)
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
            if self.store and self.session_id:
                self.store.set_status(self.session_id, "finished")
        except Exception:
            log.warning("session close failed", exc_info=True)
        self._closed.set()
