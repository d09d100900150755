"""How fast a sub-agent starts with its parent's whole context (issue 19).

A session (AgentSession, the product path) on a model folder of Qwen2.5-7B-Instruct-1M's shape
with random bf16 weights (tests/model_folder.py) gets a `--context`-token first message (Python
standard-library source); its reply, scripted (random weights call no tools), is one `task`
call. Measured, each to the first generated token:

- subagent: from the task call (SubagentHost.run) to the sub-agent's first token: the store
  fork, the engine fork (full pages shared, the partial one copied), its first message and
  prompt prefilled, one decode step over the whole context;
- reprefill: a new session over the same context (the same tokens, the prefix cache off):
  the whole context prefilled again, then the first token;
- brief: a new session from a `--brief`-token message (system prompt, then the brief).

Usage (on the H200, after `. bench/h200_setup.sh`):
    python3 bench/subagent_start.py --out $OUT/subagent_start.json
Small and on the CPU (a smoke run of the same path):
    python3 bench/subagent_start.py --tiny --context 2048 --brief 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.backends.base import GenParams  # noqa: E402
from agent.context import system_message  # noqa: E402
from agent.events import Shutdown, SubagentStarted, TurnFinished, UserInput  # noqa: E402
from agent.loop import LoopConfig  # noqa: E402
from agent.session import AgentSession, SessionOptions  # noqa: E402
from agent.subagents import SubagentHost  # noqa: E402
from memory.store import SessionStore  # noqa: E402
from runtime.local_model import LocalModel, RuntimeOptions  # noqa: E402
from tests.agent.subagent_parent import ScriptedParent as Timed  # noqa: E402
from tests.agent.subagent_parent import ScriptedParentBackend as TimedBackend  # noqa: E402
from tests.model_folder import QWEN25_7B_1M, TINY, write_model_folder  # noqa: E402

PROMPT = "Find every function in the text above that opens a file and list their names."


def source_text(tokens: int, count) -> str:
    """Standard-library source, about `tokens` tokens of it."""
    parts, n = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = f.read_text(errors="replace")
        parts.append(text)
        n += count(text)
        if n >= tokens:
            break
    text = "".join(parts)
    while count(text) > tokens:  # trim to the size asked
        text = text[: int(len(text) * tokens / count(text))]
    return text


class TimedHost(SubagentHost):
    calls: list[float] = []

    def run(self, calls):
        self.calls.append(time.perf_counter())
        return super().run(calls)


def task_call() -> str:
    body = {"name": "task", "arguments": {"description": "find file openers", "prompt": PROMPT}}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"


def subagent_start(backend: TimedBackend, repo: Path, data: Path, context_text: str) -> dict:
    Timed.script[:] = [task_call(), "done."]
    Timed.first_token.clear()
    TimedHost.calls.clear()
    store = SessionStore(data)
    opts = SessionOptions(permission_mode="auto", loop=LoopConfig(
        max_steps=2, gen=GenParams(max_tokens=1), tool_choice="none"))
    session = AgentSession(backend, repo, store, options=opts)
    session.subagents = TimedHost()
    session.subagents.bind(session)
    next(t for t in session.tools if t.name == "task").delegator = session.subagents
    session.submit(UserInput(context_text))
    session.submit(Shutdown())
    started, turns = None, []
    while not (session.closed and session._events.empty()):
        e = session.next_event(0.1)
        started = e if isinstance(e, SubagentStarted) else started
        turns += [e] if isinstance(e, TurnFinished) else []
    assert started is not None and Timed.first_token, "the sub-agent did not start"
    schemas = [t.schema() for t in session.tools]
    return {"subagent_s": Timed.first_token[0] - TimedHost.calls[0],
            "shared_tokens": started.shared_tokens, "fork_ms": started.fork_ms,
            "parent_turn_s": turns[-1].duration_ms / 1000 if turns else None,
            "session_id": session.session_id, "agent_id": started.agent_id}, schemas


def fresh_start(backend: TimedBackend, schemas, messages: list[dict], cache: bool) -> dict:
    """A new conversation of `messages`, to its first token; `cache` False: nothing reused."""
    engine = backend.model.engine
    kept = engine.kv.prefix_caching
    engine.kv.prefix_caching = kept and cache
    conv = backend.conversation(schemas)
    conv.script = []
    try:
        start = time.perf_counter()
        appended = conv.append(messages)
        list(conv.generate(GenParams(max_tokens=1, tool_choice="none"), _never()))
        return {"s": time.perf_counter() - start, "tokens": len(conv.seq.tokens),
                "computed": appended.computed_tokens}
    finally:
        conv.close()
        engine.kv.prefix_caching = kept


def _never():
    import threading

    return threading.Event()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=131072, help="tokens of parent context")
    ap.add_argument("--brief", type=int, default=2048, help="tokens of the brief")
    ap.add_argument("--tiny", action="store_true", help="the tiny shape (CPU smoke run)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="subagent_start-"))
    shape = TINY if args.tiny else QWEN25_7B_1M
    name = "tiny" if args.tiny else "qwen25-7b-1m"
    folder = write_model_folder(Path(os.environ.get("AGENT_TEST_MODEL_DIR", "/tmp/models"))
                                / name, shape)
    window = args.context + 16384
    model = LocalModel.open(str(folder), RuntimeOptions(  # constraints: as a session opens it
        max_context=window, cache_dir=work / "cache", constraints=True,
        **({"device": "cpu", "dtype": "fp32"} if args.tiny else {})))
    backend = TimedBackend(model)
    repo = work / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "README.md").write_text("# bench\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    count = backend.count_tokens
    context_text = source_text(args.context - 2000, count)  # the system prompt is the rest
    row = {"device": str(model.engine.device), "model": name, "window": window}
    started, schemas = subagent_start(backend, repo, work / "data", context_text)
    row.update(started)
    store = SessionStore(work / "data")
    row["reprefill"] = fresh_start(backend, schemas, _messages(store, row["agent_id"]),
                                   cache=False)
    brief = [system_message(schemas, None, backend.template_supports_tools()),
             {"role": "user", "content": source_text(args.brief, count) + "\n\n" + PROMPT}]
    row["brief"] = fresh_start(backend, schemas, brief, cache=True)
    row["speedup_vs_reprefill"] = round(row["reprefill"]["s"] / row["subagent_s"], 1)
    row["speedup_vs_brief"] = round(row["brief"]["s"] / row["subagent_s"], 1)
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))
    model.close()


def _messages(store: SessionStore, agent_id: str) -> list[dict]:
    """The sub-agent's messages through its first prompt (what a re-prefill starts over)."""
    from agent.history import messages, recorded

    out = messages(recorded(store.events(agent_id)))
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    return out[: last + 1]


if __name__ == "__main__":
    main()
