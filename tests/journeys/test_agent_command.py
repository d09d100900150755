"""Journeys through the installed `agent` command: real processes, the default model, real git
repositories (the calculator example, and a generated one larger than the window).

Run and tool use, `--continue` in a new process serving the earlier context from cache, a
rewind, Ctrl-C and SIGTERM mid-answer (exit 130, the partial answer kept and resumable), a
second Ctrl-C quitting at once, and a window that fills up (`context_full`, one line).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(sys.executable).parent / "agent")
PAGE = 64  # the CPU page size: a partial last page is recomputed on resume


@pytest.fixture
def env(tmp_path, smollm2_gguf):
    """A private data dir and KV cache (models linked from the shared cache)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(smollm2_gguf.parents[1], target_is_directory=True)
    return dict(os.environ, AGENT_DATA_DIR=str(tmp_path / "data"), AGENT_CACHE_DIR=str(cache),
                PYTHONUNBUFFERED="1")


def _git_repo(path: Path) -> Path:
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


@pytest.fixture
def calculator(tmp_path):
    shutil.copytree(ROOT / "examples" / "calculator", tmp_path / "calculator")
    return _git_repo(tmp_path / "calculator")


def agent(env, *args, timeout=600):
    done = subprocess.run([AGENT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def stream(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def of(lines: list[dict], kind: str) -> list[dict]:
    return [e for e in lines if e["type"] == kind]


def test_tool_use_continue_in_a_new_process_and_rewind(env, calculator):
    repo = str(calculator)
    first = agent(env, "run", "--repo", repo, "--output-format", "stream-json",
                  "--max-tokens", "48", "Read calc.py and tell me what add(2, 3) returns.")
    assert first.returncode == 0, first.stderr
    lines = stream(first.stdout)
    read = of(lines, "tool_finished")
    assert read and read[0]["name"] == "read" and read[0]["ok"]
    sid, context = lines[-1]["session_id"], of(lines, "turn_finished")[-1]["usage"]
    _continue(env, repo, sid, context["context_tokens"], "And what does sub do?")
    rewound = agent(env, "rewind", sid, "2")
    assert rewound.returncode == 0, rewound.stderr
    shown = json.loads(agent(env, "sessions", "show", sid, "--json").stdout)
    assert max(e["turn"] for e in shown["events"]) == 1
    _continue(env, repo, sid, context["context_tokens"], "What does mul do?")
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert listed[0]["turns"] == 2 and listed[0]["status"] == "finished"


def _continue(env, repo: str, sid: str, context: int, prompt: str) -> dict:
    """`--continue` in a new process: the same session, the earlier context served from cache."""
    done = agent(env, "run", "--repo", repo, "--continue", "--output-format", "json",
                 "--max-tokens", "16", prompt)
    assert done.returncode in (0, 3), done.stderr
    result = json.loads(done.stdout)
    assert result["session_id"] == sid and result["status"] in ("done", "turn_limit")
    assert result["usage"]["cached_input_tokens"] >= context - PAGE
    return result


def _interrupted_run(env, repo: str, signals: list[int], after_deltas: int = 5):
    """Start a long answer, send `signals` after some text; (rc, seconds to the turn's end and
    to the exit after the first signal, stream lines). The seconds are less one token's time
    beyond the first (a forward pass is not cut: the turn stops at the next token), so they
    stay honest on a loaded machine."""
    proc = subprocess.Popen([AGENT, "run", "--repo", repo, "--output-format", "stream-json",
                             "--max-tokens", "400", "--tool-choice", "none",
                             "Explain calc.py in great detail."],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, deltas, at = [], 0, []
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if lines[-1]["type"] == "message_delta":
            deltas, at = deltas + 1, [*at, time.monotonic()]
        if deltas == after_deltas:
            break
    step = max((b - a for a, b in zip(at, at[1:], strict=False)), default=0.0)
    sent = time.monotonic() + max(step - 0.1, 0.0)  # one token in flight is not counted
    for sig in signals:
        proc.send_signal(sig)
    turn_end = None
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if lines[-1]["type"] == "turn_finished" and turn_end is None:
            turn_end = time.monotonic() - sent
    proc.wait(30)
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    return proc.returncode, turn_end, time.monotonic() - sent, lines


def test_ctrl_c_keeps_the_partial_answer_exits_130_and_resumes(env, calculator):
    rc, turn_end, exited, lines = _interrupted_run(env, str(calculator), [signal.SIGINT])
    assert rc == 130
    assert turn_end is not None and turn_end < 1.0, turn_end  # the turn stops within a second
    assert exited < 3.0, exited
    finished = of(lines, "turn_finished")[-1]
    partial = "".join(e["text"] for e in of(lines, "message_delta"))
    assert finished["status"] == "interrupted" and partial
    sid = lines[-1]["session_id"]
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert listed[0]["id"] == sid and listed[0]["status"] == "interrupted"
    exported = json.loads(agent(env, "sessions", "export", sid).stdout)
    replies = [e["payload"]["content"] for e in exported["events"]
               if e["kind"] == "message_added" and e["payload"]["role"] == "assistant"]
    assert replies and replies[-1].startswith(partial.strip()[:20])
    more = agent(env, "run", "--repo", str(calculator), "--continue", "--output-format", "json",
                 "--max-tokens", "16", "--tool-choice", "none", "Now in one line.")
    assert more.returncode == 0, more.stderr
    result = json.loads(more.stdout)
    assert result["status"] == "done" and result["session_id"] == sid
    assert result["usage"]["cached_input_tokens"] >= finished["usage"]["context_tokens"] - PAGE


def test_sigterm_stops_like_ctrl_c(env, calculator):
    rc, turn_end, _, lines = _interrupted_run(env, str(calculator), [signal.SIGTERM])
    assert rc == 130 and turn_end is not None and turn_end < 1.0
    assert of(lines, "turn_finished")[-1]["status"] == "interrupted"


def test_a_second_ctrl_c_quits_at_once(env, tmp_path):
    # The first Ctrl-C lands in the repository's ingest, which stops only at its next prefill
    # chunk (seconds on a CPU); the second must not wait for that.
    repo = _big_repo(tmp_path / "big")
    proc = subprocess.Popen([AGENT, "run", "--repo", str(repo), "--output-format",
                             "stream-json", "hello"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for raw in proc.stdout:
        event = json.loads(raw)
        if event["type"] == "progress" and event["kind"] == "ingest" and event["done"]:
            break
    proc.send_signal(signal.SIGINT)
    notice = proc.stderr.readline()
    while "stopping the turn" not in notice:
        notice = proc.stderr.readline()
        assert notice, "no notice of the first Ctrl-C"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert proc.returncode == 130 and time.monotonic() - sent < 1.0


def _big_repo(path: Path, files: int = 60) -> Path:
    path.mkdir()
    (path / "README.md").write_text("# big\n\nA generated project: module k holds f_k.\n")
    for k in range(files):
        body = "".join(f"    total += {j} * x  # step {j} of f_{k}\n" for j in range(40))
        (path / f"mod_{k:03d}.py").write_text(
            f'def f_{k}(x):\n    """Return the weighted sum for module {k}."""\n'
            f"    total = 0\n{body}    return total\n")
    return _git_repo(path)


def test_a_repository_larger_than_the_window_leaves_room_and_fills_up_cleanly(env, tmp_path):
    repo = str(_big_repo(tmp_path / "big"))
    first = agent(env, "run", "--repo", repo, "--output-format", "json", "--max-tokens", "48",
                  "--tool-choice", "none", "What is this project? Answer in one sentence.")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    usage = result["usage"]
    assert result["status"] == "done" and usage["output_tokens"] >= 8  # a real answer
    # the snapshot took at most half the window (the rest: instructions, tools, this turn)
    assert usage["context_tokens"] <= usage["context_window"] // 2 + 2048 + 48
    huge = "Please consider this carefully. " * 2000  # ~12K tokens: more than the window
    full = agent(env, "run", "--repo", repo, "--continue", "--output-format", "text",
                 "--max-tokens", "48", huge)
    assert full.returncode == 3, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "context window is full" in errors[0]
    assert "new session" in errors[0]
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert listed[0]["status"] == "finished"
