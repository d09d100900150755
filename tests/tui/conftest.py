"""Test doubles for the TUI: a ScriptedHandle that answers ops with scripted events, and a
FakeCatalog of saved sessions. Tests reach them through the fixtures at the bottom (under
`--import-mode=importlib` a conftest is not importable by name)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Event,
    Interrupt,
    KVStats,
    Op,
    SessionStarted,
    Shutdown,
    TokenDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFinished,
    TurnStarted,
    Usage,
    UserInput,
)
from agent.handle import AgentHandle
from tui.app import AgentApp
from tui.catalog import SessionSummary
from tui.info import AppInfo


class Gate:
    """A pause in a turn script: the rest waits for `release()` or an ApprovalDecision."""

    def __init__(self, name: str) -> None:
        self.name = name


HOLD = Gate("hold")  # continue on ScriptedHandle.release()
APPROVAL = Gate("approval")  # continue on the next ApprovalDecision

Step = Event | Gate
Script = Callable[[int, str], list[Step]]

DIFF = "\n".join(
    [
        "--- a/calc.py",
        "+++ b/calc.py",
        "@@ -1,5 +1,5 @@",
        " def add(a, b):",
        "-    return a - b",
        "+    return a + b",
        " ",
        " ",
        " def mul(a, b):",
    ]
)

USAGE = Usage(
    input_tokens=2400,
    output_tokens=48,
    cached_input_tokens=2100,
    cached_by_tier={"device": 1800, "host": 300},
    computed_tokens=348,
    context_tokens=5200,
    context_window=8192,
    decode_tok_s=41.5,
)
KV = KVStats(device_pages=20, host_pages=4, disk_pages=30, page_size=256)


def edit_turn(n: int, prompt: str) -> list[Step]:
    """A turn that explains, edits a file (with a diff) and concludes."""
    call = f"call-{n}-edit"
    return [
        TurnStarted(n, prompt),
        *(TokenDelta(t) for t in ["I'll fix ", "the sign in ", "`add`", ".\n"]),
        ToolCallStarted(call, "edit", {"path": "calc.py", "old": "a - b", "new": "a + b"}),
        ToolCallFinished(call, "edit", True, "Edited calc.py (1 line)", {"diff": DIFF}),
        *(TokenDelta(t) for t in ["Fixed: ", "`add` now ", "**adds**."]),
        TurnFinished(n, "done", "Fixed: `add` now **adds**.", USAGE),
        KV,
    ]


def approval_turn(n: int, prompt: str) -> list[Step]:
    """A turn whose shell call needs approval before it runs."""
    call = f"call-{n}-shell"
    args = {"command": "git status --short"}
    return [
        TurnStarted(n, prompt),
        ToolCallStarted(call, "shell", args),
        ApprovalRequested(call, "shell", args, suggested_rule="shell(git *)"),
        APPROVAL,
        ToolCallFinished(call, "shell", True, " M calc.py\n?? notes.txt"),
        TokenDelta("One file changed."),
        TurnFinished(n, "done", "One file changed.", USAGE),
    ]


def held_turn(n: int, prompt: str) -> list[Step]:
    """A turn that stays running until the test calls `release()`."""
    return [
        TurnStarted(n, prompt),
        TokenDelta(f"Working on turn {n}…"),
        HOLD,
        TurnFinished(n, "done", f"Working on turn {n}…", USAGE),
    ]


def session_started(session_id: str = "s-1", resumed: bool = False) -> SessionStarted:
    return SessionStarted(session_id, "SmolLM2-135M-Instruct", "/repo/calc", resumed, 8192)


class ScriptedHandle(AgentHandle):
    """Answers ops with scripted events, in order, like an agent would.

    UserInput runs `script(turn, prompt)` up to its first Gate; input sent while a turn runs is
    queued and starts when the turn's TurnFinished has been emitted. Interrupt drops the rest of
    the running turn and emits TurnFinished("interrupted"). Shutdown closes the handle (after
    `close_delay_s`, if set). Every op is recorded in `ops`.
    """

    def __init__(
        self,
        script: Script = edit_turn,
        start: list[Event] | None = None,
        close_delay_s: float = 0.0,
    ) -> None:
        self.script = script
        self.ops: list[Op] = []
        self.close_delay_s = close_delay_s
        self._events: queue.Queue[Event] = queue.Queue()
        self._lock = threading.Lock()
        self._rest: list[Step] = []  # the running turn's steps after the gate it waits at
        self._running: tuple[int, str] | None = None
        self._queued: list[str] = []
        self._turn = 0
        self._closed = threading.Event()
        for event in [session_started(), KV] if start is None else start:
            self.emit(event)

    # ---- AgentHandle ---------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)
            if isinstance(op, UserInput):
                self._user_input(op.text)
            elif isinstance(op, ApprovalDecision):
                self._continue(APPROVAL)
            elif isinstance(op, Interrupt):
                self._interrupt()
            elif isinstance(op, Shutdown):
                self._shutdown()

    def next_event(self, timeout: float | None = None) -> Event | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ---- test controls -----------------------------------------------------------------

    def emit(self, *events: Event) -> None:
        """Queue events as if the agent had produced them."""
        for event in events:
            self._events.put(event)

    def release(self) -> None:
        """Let a turn waiting at HOLD continue."""
        with self._lock:
            self._continue(HOLD)

    def close(self) -> None:
        """Close as if the agent had stopped by itself."""
        self._closed.set()

    def ops_of(self, kind: type) -> list[Any]:
        return [op for op in self.ops if isinstance(op, kind)]

    def stream_forever(self, stop: threading.Event, interval_s: float = 0.0005) -> threading.Thread:
        """Emit TokenDeltas from a thread of its own until `stop` is set."""

        def run() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                self.emit(TokenDelta(f"token{n} " + ("\n\n" if n % 40 == 0 else "")))
                time.sleep(interval_s)

        thread = threading.Thread(target=run, name="scripted-stream", daemon=True)
        thread.start()
        return thread

    # ---- the state machine (under the lock) ----------------------------------------------

    def _user_input(self, text: str) -> None:
        if self._running is None:
            self._start_turn(text)
        else:
            self._queued.append(text)

    def _start_turn(self, text: str) -> None:
        self._turn += 1
        self._running = (self._turn, text)
        self._rest = self.script(self._turn, text)
        self._advance()

    def _continue(self, gate: Gate) -> None:
        if self._rest and self._rest[0] is gate:
            self._rest.pop(0)
            self._advance()

    def _advance(self) -> None:
        while self._rest and not isinstance(self._rest[0], Gate):
            event = self._rest.pop(0)
            self.emit(event)
            if isinstance(event, TurnFinished):
                self._running = None
        if self._running is None and self._queued:
            self._start_turn(self._queued.pop(0))

    def _interrupt(self) -> None:
        if self._running is not None:
            self._rest = [TurnFinished(self._running[0], "interrupted", "", USAGE)]
            self._advance()

    def _shutdown(self) -> None:
        def close() -> None:
            time.sleep(self.close_delay_s)
            self._closed.set()

        self._rest = []
        self._queued.clear()
        if self.close_delay_s:
            threading.Thread(target=close, daemon=True).start()
        else:
            self._closed.set()


SESSIONS = [
    SessionSummary(
        "s-1",
        "Fix the calculator",
        "/repo/calc",
        3,
        5200,
        datetime(2026, 11, 20, 14, 3),
        "Fixed the sign in add(); tests pass.",
    ),
    SessionSummary(
        "s-2",
        "Add a CLI",
        "/repo/calc",
        12,
        48_000,
        datetime(2026, 11, 18, 9, 30),
        "Added argparse entry point with --precision; README updated.",
    ),
    SessionSummary(
        "s-3",
        "Port to Rust",
        "/repo/calc-rs",
        40,
        310_000,
        datetime(2026, 10, 2, 17, 45),
        "Half of the parser ported; lexer done.",
    ),
]


class FakeCatalog:
    """Saved sessions in a list; `calls` records what the app asked for, in order."""

    def __init__(self, sessions: list[SessionSummary] | None = None) -> None:
        self.sessions = list(SESSIONS if sessions is None else sessions)
        self.calls: list[tuple[str, str]] = []
        self.opened: dict[str, ScriptedHandle] = {}

    def list(self) -> list[SessionSummary]:
        self.calls.append(("list", ""))
        return list(self.sessions)

    def delete(self, session_id: str) -> None:
        self.calls.append(("delete", session_id))
        self.sessions = [s for s in self.sessions if s.id != session_id]

    def fork(self, session_id: str) -> str:
        self.calls.append(("fork", session_id))
        return f"{session_id}-fork"

    def open(self, session_id: str) -> ScriptedHandle:
        self.calls.append(("open", session_id))
        handle = ScriptedHandle(start=[session_started(session_id, resumed=True), KV])
        self.opened[session_id] = handle
        return handle


INFO = AppInfo("SmolLM2-135M-Instruct", "/repo/calc", 8192, "s-1")


class FixedClock:
    """A clock tests move by hand, so rates and ETAs are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def scripts() -> dict[str, Script]:
    """The turn scripts by name: edit, approval, held."""
    return {"edit": edit_turn, "approval": approval_turn, "held": held_turn}


@pytest.fixture
def make_handle() -> Callable[..., ScriptedHandle]:
    return ScriptedHandle


@pytest.fixture
def handle() -> ScriptedHandle:
    return ScriptedHandle()


@pytest.fixture
def catalog() -> FakeCatalog:
    return FakeCatalog()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def make_app(clock: FixedClock) -> Iterator[Callable[..., AgentApp]]:
    """Build an AgentApp on a handle (default: a fresh ScriptedHandle) with fixed info/clock."""

    def make(handle: AgentHandle | None = None, **kwargs: Any) -> AgentApp:
        kwargs.setdefault("info", INFO)
        kwargs.setdefault("clock", clock)
        return AgentApp(handle or ScriptedHandle(), **kwargs)

    yield make


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """`await wait_for(pilot, predicate)`: let the app run until predicate() or fail."""

    async def wait(pilot: Any, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
            await pilot.pause(0.02)
        await pilot.pause()

    return wait


@pytest.fixture
def canned() -> dict[str, Any]:
    """Canned values tests build their own scripts from: DIFF, USAGE, KV, HOLD, APPROVAL."""
    return {"DIFF": DIFF, "USAGE": USAGE, "KV": KV, "HOLD": HOLD, "APPROVAL": APPROVAL}
