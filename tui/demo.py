"""`python -m tui.demo`: the app on a canned agent, to try the UI without a model.

Each prompt gets the same turn: a little streamed text, an edit with a diff, a shell call that
asks for approval, and a closing line. The real launch (`agent`, `agent tui`) lives in the CLI.
"""

from __future__ import annotations

import queue
import threading
import time

from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Interrupt,
    KVStats,
    Progress,
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
from agent.handle import QueuedHandle
from tui.app import AgentApp

DIFF = (
    "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
    " def add(a, b):\n-    return a - b\n+    return a + b\n"
)
WINDOW = 8192


class DemoHandle(QueuedHandle):
    """A pretend agent: ops are handled on a thread of its own, with human-visible delays."""

    def __init__(self, token_delay_s: float = 0.03) -> None:
        super().__init__()
        self._delay = token_delay_s
        self._context = 1200
        threading.Thread(target=self._run, name="demo-agent", daemon=True).start()

    def _run(self) -> None:
        self._start()
        turn = 0
        while True:
            op = self._ops.get()
            if isinstance(op, Shutdown):
                self._closed.set()
                return
            if isinstance(op, UserInput):
                turn += 1
                self._turn(turn, op.text)

    def _start(self) -> None:
        for done in range(0, 1201, 200):
            self._events.put(Progress("ingest", done, 1200))
            time.sleep(0.1)
        self._events.put(SessionStarted("demo", "demo-model", "/demo/repo", False, WINDOW))
        self._events.put(KVStats(5, 0, 5, 256))

    def _turn(self, turn: int, prompt: str) -> None:
        self._events.put(TurnStarted(turn, prompt))
        if not self._say("Let me fix `add` in **calc.py**.\n"):
            return self._finish(turn, "interrupted")
        args = {"path": "calc.py", "old": "a - b", "new": "a + b"}
        self._events.put(ToolCallStarted(f"e{turn}", "edit", args))
        self._events.put(
            ToolCallFinished(f"e{turn}", "edit", True, "Edited calc.py", {"diff": DIFF})
        )
        shell = {"command": "python -m pytest -q"}
        self._events.put(ToolCallStarted(f"s{turn}", "shell", shell))
        self._events.put(ApprovalRequested(f"s{turn}", "shell", shell, "shell(python -m pytest*)"))
        decision = self._wait_decision()
        if decision is None:
            return self._finish(turn, "interrupted")
        ok = decision.decision != "deny"
        self._events.put(ToolCallFinished(f"s{turn}", "shell", ok, "1 passed" if ok else "denied"))
        self._say("All tests pass now." if ok else "I could not run the tests.")
        self._finish(turn, "done")

    def _say(self, text: str) -> bool:
        for word in text.split(" "):
            if self._interrupted():
                return False
            self._events.put(TokenDelta(word + " "))
            time.sleep(self._delay)
        return True

    def _interrupted(self) -> bool:
        try:
            return isinstance(self._ops.get_nowait(), Interrupt)
        except queue.Empty:
            return False

    def _wait_decision(self) -> ApprovalDecision | None:
        while True:
            op = self._ops.get()
            if isinstance(op, ApprovalDecision):
                return op
            if isinstance(op, Interrupt):
                return None

    def _finish(self, turn: int, status: str) -> None:
        self._context += 400
        usage = Usage(
            420,
            40,
            self._context - 400,
            {"device": self._context - 400},
            440,
            self._context,
            WINDOW,
            38.0,
        )
        self._events.put(TurnFinished(turn, status, "", usage))  # type: ignore[arg-type]
        self._events.put(KVStats(self._context // 256, 0, self._context // 256, 256))


def main() -> None:
    """Run the demo app."""
    AgentApp(DemoHandle()).run()


if __name__ == "__main__":
    main()
