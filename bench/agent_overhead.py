"""Agent overhead per turn with a 100K-token context, model time excluded.

Runs real turns through the real loop: the chat template renders the delta against the whole
conversation, the tokenizer encodes it, the reply is parsed, a `read` tool call is checked and
dispatched, and everything is written to a real SQLite store. Only the engine is replaced, by
one that appends token ids without computing anything, so what is timed is the agent's own work.

    python bench/agent_overhead.py --turns 20 --out bench/results/agent_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.backends.base import GenParams
from agent.backends.local import LocalConversation
from agent.checkpoint import Checkpoints
from agent.events import ApprovalDecision
from agent.loop import AgentLoop, LoopConfig
from agent.permissions import Permissions
from agent.session import StoreRecorder
from agent.tools import default_tools
from agent.tools.base import ToolContext
from agent.workspace import Workspace
from memory.store import SessionStore
from runtime.engine.engine import ExtendResult, StreamEvent
from runtime.local_model import _template
from runtime.model_cache import ensure_default_model
from runtime.tokenizer import Tokenizer


class NoModelEngine:
    """Appends ids and replays scripted replies: no model time at all."""

    stop_ids = frozenset()

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.replies: list[list[int]] = []

    def new_sequence(self):
        from runtime.engine.sequence import BlockTable, Sequence

        return Sequence(table=BlockTable("cpu"))

    def extend(self, seq, ids):
        seq.tokens.extend(ids)
        seq.num_computed = len(seq.tokens)
        return ExtendResult(len(ids), 0, {}, len(ids), 0.0)

    def generate(self, seq, params):
        ids = self.replies.pop(0)
        seq.tokens.extend(ids)
        for i, t in enumerate(ids):
            yield StreamEvent(t, self.tokenizer.decode([t]), "stop" if i == len(ids) - 1 else None)


class Model:
    """The parts of LocalModel a conversation uses."""

    def __init__(self, tokenizer: Tokenizer):
        self.name = "bench"
        self.tokenizer = tokenizer
        self.template = _template(tokenizer)
        self.engine = NoModelEngine(tokenizer)


def fill(conv: LocalConversation, tokenizer: Tokenizer, tokens: int) -> None:
    """Grow the conversation to about `tokens` tokens of real-looking history."""
    body = Path(__file__).read_text()
    conv.append([{"role": "system", "content": "You are a coding agent."}], False)
    while len(conv.seq.tokens) < tokens:
        conv.model.engine.replies.append(tokenizer.encode(body[:3000] + "<|im_end|>"))
        conv.append([{"role": "user", "content": body[3000:6000]}])
        for _ in conv.generate(GenParams(), threading.Event()):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=100_000)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    tokenizer = Tokenizer.from_gguf(ensure_default_model(progress=False))
    model = Model(tokenizer)
    conv = LocalConversation(model, None)
    fill(conv, tokenizer, args.context)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        store = SessionStore(Path(tmp) / "data")
        sid = store.create_session(str(repo), "bench", "bench").id
        tools = default_tools()
        ctx = ToolContext(Workspace(repo))
        loop = AgentLoop(conv, tools, ctx, Permissions("auto", tools=tools), lambda e: None,
                         lambda r: ApprovalDecision(r.call_id, "allow"),
                         StoreRecorder(store, sid), LoopConfig(max_steps=4))
        call = '<tool_call>\n{"name": "read", "arguments": {"path": "calc.py"}}\n</tool_call>'
        times, checkpoints = [], []
        marks = Checkpoints(repo, sid)
        for turn in range(1, args.turns + 1):
            start = time.perf_counter()
            marks.create(turn)  # the session checkpoints the worktree as each turn starts
            checkpoints.append((time.perf_counter() - start) * 1000)
            model.engine.replies += [tokenizer.encode(call + "<|im_end|>"),
                                     tokenizer.encode("add returns a + b.<|im_end|>")]
            start = time.perf_counter()
            loop.run_turn(turn, "What does add return?")
            times.append((time.perf_counter() - start) * 1000 / 2)  # two model steps a turn
        store.close()
    result = {"context_tokens": len(conv.seq.tokens), "turns": args.turns,
              "step_overhead_ms_median": round(statistics.median(times), 2),
              "step_overhead_ms_max": round(max(times), 2), "goal_ms": 20,
              "checkpoint_ms_median": round(statistics.median(checkpoints), 2)}
    for k, v in result.items():
        print(f"{k:28s} {v}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
