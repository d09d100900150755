"""A sub-agent through the installed `agent` with the default model: the prompt asks for one,
the chain policy makes the `task` call, the sub-agent (a fork of the session's context) reads
the file and answers; the stream nests its lines, `sessions show` and `export` include it, and
the session goes on with `--continue` in a new process."""

from __future__ import annotations

import json

import pytest

from tests.agent.test_subagent_model import notes_repo  # noqa: F401 - a fixture
from tests.cli.stream_schema import validate_stream
from tests.journeys.test_agent_command import agent, env  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow


def test_a_subagent_reads_for_the_session_and_survives_a_resume(env, notes_repo):  # noqa: F811
    repo = str(notes_repo)
    done = agent(env, "run", "--repo", repo, "--output-format", "stream-json",
                 "--max-tokens", "48", "--permission-mode", "auto",
                 "Use a sub-agent to read notes.txt and tell me the code word.")
    assert done.returncode == 0, done.stderr
    lines = validate_stream(done.stdout)
    task = next(e for e in lines if e["type"] == "tool_finished" and e["name"] == "task"
                and "parent_call_id" not in e)
    nested = [e for e in lines if e.get("parent_call_id") == task["call_id"]]
    reads = [e for e in nested if e["type"] == "tool_finished" and e["name"] == "read"]
    assert reads and reads[0]["ok"] and "PELICAN" in reads[0]["content"]
    finished = next(e for e in lines if e["type"] == "subagent_finished")
    assert task["ok"] and finished["status"] == "done"
    assert finished["shared_tokens"] > finished["usage"]["computed_tokens"] > 0
    sid, aid = lines[-1]["session_id"], finished["agent_id"]
    assert all(e["agent_id"] == aid for e in nested)
    shown = agent(env, "sessions", "show", sid)
    assert f"sub-agent {aid}" in shown.stdout and "tokens shared" in shown.stdout
    exported = json.loads(agent(env, "sessions", "export", sid).stdout)
    child = exported["subagents"][0]["session"]
    assert (child["id"], child["parent_id"], child["parent_call_id"]) == \
        (aid, sid, task["call_id"])
    parent_ids = [i for s in exported["segments"] for i in s["ids"]]
    child_ids = [i for s in exported["subagents"][0]["segments"] for i in s["ids"]]
    assert child_ids[: finished["shared_tokens"]] == parent_ids[: finished["shared_tokens"]]
    listed = json.loads(agent(env, "sessions", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [sid]  # the sub-agent is listed under its parent
    again = agent(env, "run", "--repo", repo, "--continue", "--output-format", "json",
                  "--max-tokens", "16", "What was the code word?")
    assert again.returncode in (0, 3), again.stderr
    result = json.loads(again.stdout)
    assert result["session_id"] == sid
    assert result["usage"]["cached_input_tokens"] > finished["shared_tokens"] - 64
