"""`agent run` as users run it: real processes, the default model, a real store and KV cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.stream_schema import validate_stream as schema_checks

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(sys.executable).parent / "agent")


@pytest.fixture
def env(tmp_path, smollm2_gguf):
    """A private data dir and KV cache; the model cache stays shared."""
    e = dict(os.environ, AGENT_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    return e


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "calculator", path)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def agent(env, *args, timeout=600):
    return subprocess.run([AGENT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def validate_stream(stdout: str) -> list[dict]:
    """The schema's checks, and a run that ended done or at a limit."""
    lines = schema_checks(stdout)
    result = lines[-1]
    assert result["status"] in ("done", "turn_limit")
    assert result["usage"]["cached_input_tokens"] <= result["usage"]["input_tokens"]
    return lines


def test_stream_json_validates_and_resume_reuses_the_whole_context(env, repo):
    first = agent(env, "run", "--repo", str(repo), "--output-format", "stream-json",
                  "--max-tokens", "24", "--max-steps", "2", "What is in calc.py?")
    assert first.returncode in (0, 3), first.stderr
    lines = validate_stream(first.stdout)
    session = lines[-1]["session_id"]
    context = [e for e in lines if e["type"] == "turn_finished"][-1]["usage"]["context_tokens"]
    kv = [e for e in lines if e["type"] == "kv_stats"][-1]
    assert kv["device_pages"] * kv["page_size"] >= context - kv["page_size"]
    second = agent(env, "run", "--repo", str(repo), "--continue", "--output-format", "json",
                   "--max-tokens", "16", "--max-turns", "1", "And in test_calc.py?")
    assert second.returncode in (0, 3), second.stderr
    result = json.loads(second.stdout)
    assert result["session_id"] == session
    page = 64
    assert result["usage"]["cached_input_tokens"] >= context - page  # no re-prefill of the past
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert listed[0]["id"] == session and listed[0]["turns"] == 2


def test_kill_9_mid_run_loses_at_most_the_event_being_written(env, repo):
    proc = subprocess.Popen([AGENT, "run", "--repo", str(repo), "--output-format",
                             "stream-json", "--max-tokens", "400", "Explain calc.py in detail."],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deltas = 0
    for line in proc.stdout:
        if json.loads(line)["type"] == "message_delta":
            deltas += 1
            if deltas == 5:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["status"] == "crashed"  # not left "active"
    sid = listed[0]["id"]
    shown = json.loads(agent(env, "sessions", "show", sid, "--json").stdout)
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds[:2] == ["message_added", "snapshot"] and "turn_started" in kinds  # committed
    again = agent(env, "run", "--repo", str(repo), "--resume", sid, "--output-format", "json",
                  "--max-tokens", "16", "--max-turns", "1", "Summarise in one line.")
    assert again.returncode in (0, 3), again.stderr
    assert json.loads(again.stdout)["session_id"] == sid
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert listed[0]["status"] == "finished"


def test_errors_are_one_line_with_the_fix(env, repo, tmp_path):
    missing = agent(env, "run", "--repo", str(repo), "--model", str(tmp_path / "nope"), "hi")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr
    bad_repo = agent(env, "run", "--repo", str(tmp_path / "none"), "hi")
    assert bad_repo.returncode == 2 and "not a directory" in bad_repo.stderr
    no_session = agent(env, "run", "--repo", str(repo), "--resume", "zzz", "hi")
    assert no_session.returncode == 1 and no_session.stderr.startswith("error:")


def test_default_model_completes_a_task_with_a_real_tool(env, repo):
    done = agent(env, "run", "--repo", str(repo), "--output-format", "stream-json",
                 "--max-tokens", "96", "Read calc.py and tell me what add(2, 3) returns.")
    assert done.returncode == 0, done.stderr
    lines = validate_stream(done.stdout)
    finished = [e for e in lines if e["type"] == "tool_finished"]
    assert finished and finished[0]["name"] == "read" and finished[0]["ok"]
    assert "def add" in finished[0]["content"]
    assert lines[-1]["status"] == "done" and "add" in lines[-1]["result"]  # answers in words
    steps = [e for e in lines if e["type"] == "assistant"]
    assert steps[0]["tool_calls"][0]["name"] == "read" and steps[-1]["tool_calls"] == []


def test_default_model_writes_a_python_function(env):
    done = agent(env, "generate", "--json", "--max-tokens", "120", "--prompt",
                 "Write a Python function that returns the square of a number.")
    assert done.returncode == 0, done.stderr
    text = json.loads(done.stdout)["text"]
    assert "def " in text and "return" in text


def test_an_exported_session_imports_elsewhere_and_resumes(env, repo, tmp_path):
    first = agent(env, "run", "--repo", str(repo), "--output-format", "json",
                  "--max-tokens", "16", "--tool-choice", "none", "What is in calc.py?")
    assert first.returncode in (0, 3), first.stderr
    sid = json.loads(first.stdout)["session_id"]
    exported = tmp_path / "session.json"
    assert agent(env, "sessions", "export", sid, "-o", str(exported)).returncode == 0
    assert exported.stat().st_size < 40_000  # one array per segment, not one id per line
    from runtime import settings

    fresh_kv = tmp_path / "fresh-cache"
    fresh_kv.mkdir()
    (fresh_kv / "models").symlink_to(settings.cache_dir() / "models", target_is_directory=True)
    for name, extra in [("same-kv", {}), ("no-pages", {"AGENT_CACHE_DIR": str(fresh_kv)})]:
        there = dict(env, AGENT_DATA_DIR=str(tmp_path / name), **extra)
        imported = agent(there, "sessions", "import", str(exported), "--json")
        assert imported.returncode == 0, imported.stderr
        new_id = json.loads(imported.stdout)["id"]
        again = agent(there, "run", "--repo", str(repo), "--resume", new_id, "--output-format",
                      "json", "--max-tokens", "8", "--tool-choice", "none", "And briefly?")
        assert again.returncode in (0, 3), again.stderr
        result = json.loads(again.stdout)
        assert result["session_id"] == new_id
        restore = [e for e in result["events"] if e["type"] == "init"][0]
        assert restore["resumed"]
        usage = result["usage"]
        if name == "same-kv":  # the pages are on this disk: the past comes back, not computed
            assert usage["cached_by_tier"].get("disk", 0) + usage["cached_by_tier"].get(
                "device", 0) + usage["cached_by_tier"].get("host", 0) > 0, usage
        else:  # no pages: recomputed, and it still answers
            assert usage["computed_tokens"] > 0, usage
