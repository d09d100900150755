"""The headless stream against its schema: a scripted model, a real session, store and repo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.backends.scripted import ScriptedBackend
from agent.session import AgentSession, SessionOptions
from cli.render import HeadlessRenderer
from memory.store import SessionStore
from tests.cli.stream_schema import validate_lines

READ = '<tool_call>{"name": "read", "arguments": {"path": "calc.py"}}</tool_call>'


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def render(repo: Path, store, script: list[str], fmt: str, tasks: list[str],
           max_turns: int | None = None) -> tuple[list[dict], str]:
    lines: list[dict] = []
    session = AgentSession(ScriptedBackend(script), repo, store,
                           options=SessionOptions(permission_mode="accept-edits"))
    renderer = HeadlessRenderer(session, fmt, out=lambda *a, **k: None, out_json=lines.append,
                                err=lambda text: None, tasks=tasks, max_turns=max_turns)
    status = renderer.drain()
    session.wait_closed(10)
    return lines, status


def test_every_line_fits_the_schema_and_says_what_happened(repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    lines, status = render(repo, store, [READ, "add(2, 3) returns 5."], "stream-json",
                           ["What does add(2, 3) return?"])
    validate_lines(lines)
    assert status == "done"
    init = lines[0]
    assert init["type"] == "init" and init["repo_root"] == str(repo)
    assert "read" in init["tools"] and init["permission_mode"] == "accept-edits"
    steps = [e for e in lines if e["type"] == "assistant"]
    assert [len(s["tool_calls"]) for s in steps] == [1, 0]
    assert steps[0]["tool_calls"][0]["arguments"] == {"path": "calc.py"}
    result = next(e for e in lines if e["type"] == "tool_finished")
    assert result["ok"] and "def add" in result["content"]
    end = lines[-1]
    assert end["subtype"] == "success" and not end["is_error"]
    assert end["result"] == "add(2, 3) returns 5." and end["num_turns"] == 1
    assert end["num_steps"] == 2 and end["duration_ms"] >= 0
    assert end["time_to_first_token_ms"] is not None
    assert 0 <= end["usage"]["cached_input_tokens"] <= end["usage"]["input_tokens"]


def test_tasks_run_as_turns_and_max_turns_stops_before_the_rest(repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    lines, status = render(repo, store, ["one", "two", "three"], "stream-json",
                           ["first", "second", "third"], max_turns=2)
    validate_lines(lines)
    assert status == "turn_limit"
    assert [e["prompt"] for e in lines if e["type"] == "turn_started"] == ["first", "second"]
    assert lines[-1]["subtype"] == "error_max_turns" and lines[-1]["is_error"]
    assert lines[-1]["num_turns"] == 2 and lines[-1]["result"] == "two"


def test_max_steps_ends_the_turn_as_error_max_turns(repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    session = AgentSession(ScriptedBackend([READ] * 3), repo, store, options=SessionOptions(
        permission_mode="accept-edits", loop=_loop(max_steps=2)))
    lines: list[dict] = []
    renderer = HeadlessRenderer(session, "stream-json", out=print, out_json=lines.append,
                                err=lambda text: None, tasks=["read it forever"])
    assert renderer.drain() == "turn_limit"
    validate_lines(lines)
    assert lines[-1]["subtype"] == "error_max_turns" and lines[-1]["num_steps"] == 2


def test_json_output_is_the_result_with_the_whole_transcript(repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    lines, _ = render(repo, store, [READ, "It adds."], "json", ["Explain calc.py"])
    assert len(lines) == 1
    (result,) = validate_lines(_unfold(lines[0]))[-1:]
    kinds = [e["type"] for e in lines[0]["events"]]
    assert kinds[0] == "init" and "assistant" in kinds and "tool_finished" in kinds
    assert "message_delta" not in kinds and result["result"] == "It adds."
    json.dumps(lines[0])  # all of it is JSON


def _unfold(result: dict) -> list[dict]:
    """The events, then the result itself (validated with its `events` too)."""
    return [*result["events"], result]


def _loop(max_steps: int):
    from agent.loop import LoopConfig

    return LoopConfig(max_steps=max_steps)


def test_a_session_that_cannot_open_is_one_error_then_the_result(repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    other = store.create_session(str(repo), "another-model", "another-fingerprint", "old")
    store.release_lock(other.id)
    session = AgentSession(ScriptedBackend(["never"]), repo, store, resume_id=other.id)
    lines: list[dict] = []
    renderer = HeadlessRenderer(session, "stream-json", out=print, out_json=lines.append,
                                err=lambda text: None, tasks=["hi"])
    assert renderer.drain() == "error"
    validate_lines(lines)
    assert lines[0]["fatal"] and "--model another-model" in lines[0]["message"]
    assert lines[-1]["subtype"] == "error" and lines[-1]["is_error"]
