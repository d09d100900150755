"""Resume works for every session the agent can produce, on every supported template.

Sessions with tool calls, tool errors, denied approvals, interrupts mid-answer and mid-tool, a
rewind, files changed while away and a killed process are made on the real engine (scripted
replies, page size 16), then each is resumed in a new process: its next turn must finish and
serve at least 99% of the earlier context from the KV cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.events import (
    ApprovalDecision,
    ApprovalRequested,
    Interrupt,
    Shutdown,
    TokenDelta,
    ToolCallStarted,
    TurnFinished,
    UserInput,
)
from agent.session import AgentSession, SessionOptions
from memory.store import SessionStore
from runtime import settings
from tests.journeys.resume_worker import events_of
from tests.journeys.scripted_local import SLOW, ScriptedLocalBackend, call
from tests.journeys.templates import TEMPLATES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
LONG = "a long answer that goes on " * 30


def _repo(path: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "calculator", path)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


# case: (script, prompts, permission mode, what the resumed model must see)
CASES = {
    "tool_call": ([call("read", path="calc.py"), "add returns a + b."], ["what is add?"],
                  "auto", ["def add", "add returns a + b."]),
    "tool_error": ([call("read", path="missing.py"), "no such file."], ["read missing.py"],
                   "auto", ["missing.py", "no such file."]),
    "denied": ([call("write", path="new.txt", content="x"), "not written."], ["write new.txt"],
               "ask", ["denied", "not written."]),
    "interrupt_answer": ([SLOW + LONG], ["explain"], "auto", ["a long answer"]),
    "interrupt_tool": ([call("shell", command="sleep 30")], ["wait"], "auto", ["sleep 30"]),
    "rewind": (["one.", "two.", "three."], ["first", "second", "third"], "auto",
               ["first", "one."]),
    "external": (["hi."], ["hello"], "auto", ["hello", "calc.py"]),
}


def _drive(session: AgentSession, prompts: list[str], rewind_to: int | None) -> None:
    for text in prompts:
        session.submit(UserInput(text))
    finished, deltas = 0, 0
    for event in events_of(session):
        deltas += isinstance(event, TokenDelta)
        if isinstance(event, ApprovalRequested):
            session.submit(ApprovalDecision(event.call_id, "deny"))
        elif "interrupt" in _case(session) and (
                (isinstance(event, TokenDelta) and deltas == 8)
                or isinstance(event, ToolCallStarted)):
            session.submit(Interrupt())
        elif isinstance(event, TurnFinished):
            finished += 1
            if finished == len(prompts):
                if rewind_to:
                    session.rewind(rewind_to)
                session.submit(Shutdown())


def _case(session: AgentSession) -> str:
    return session.options.title or ""


def _make(template: str, gguf: Path, base: Path) -> list[dict]:
    backend = ScriptedLocalBackend.open(gguf, template, [])
    store = SessionStore(settings.data_dir())
    jobs = []
    for case, (script, prompts, mode, expect) in CASES.items():
        repo = _repo(base / f"{template}-{case}")
        backend.script = list(script)
        session = AgentSession(backend, repo, store,
                               options=SessionOptions(permission_mode=mode, title=case))
        _drive(session, prompts, 3 if case == "rewind" else None)
        if case == "external":
            (repo / "calc.py").write_text((repo / "calc.py").read_text() + "\n# changed\n")
        jobs.append({"case": case, "session_id": session.session_id, "repo": str(repo),
                     "expect": expect})
    backend.close()
    return jobs


def _killed(template: str, gguf: Path, base: Path, env: dict) -> dict:
    repo = _repo(base / f"{template}-killed")
    proc = subprocess.Popen([sys.executable, "-m", "tests.journeys.resume_worker", "hang",
                             template, str(gguf), str(repo)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    sid = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert sid, "the hanging session never started"
    assert SessionStore(settings.data_dir()).get(sid).status == "crashed"
    return {"case": "killed", "session_id": sid, "repo": str(repo), "expect": ["system"]}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AGENT_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_kind_of_session_resumes_in_a_new_process(template, smollm2_gguf, dirs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    jobs = _make(template, smollm2_gguf, dirs) + [_killed(template, smollm2_gguf, dirs, env)]
    done = subprocess.run([sys.executable, "-m", "tests.journeys.resume_worker", "resume",
                           template, str(smollm2_gguf), json.dumps(jobs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["case"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(results) == set(CASES) | {"killed"}
    for case, r in results.items():
        assert r["status"] == "done", (case, r)
        assert r["cached"] >= 0.99 * r["restored"] > 0, (case, r)
        assert all(r["found"].values()), (case, r["found"])
    assert any("calc.py" in n for n in results["external"]["notes"])
    assert any("cut short" in n or "without closing" in n for n in results["killed"]["notes"])
