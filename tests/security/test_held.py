"""What already held keeps holding, end to end: in a session with `--permission-mode ask
--allow 'shell(git *)'` the bypasses reach the user, and `..`, absolute, `~` and symlinked
paths, `.git` writes and git's code-running options stay refused through every tool."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.backends.base import GenParams
from agent.backends.scripted import ScriptedBackend
from agent.events import ApprovalDecision, ApprovalRequested, Shutdown, TurnFinished, UserInput
from agent.loop import LoopConfig
from agent.session import AgentSession, SessionOptions
from agent.tools import run_tool
from agent.tools.edit import EditTool
from agent.tools.git import GitTool
from agent.tools.glob import GlobTool
from agent.tools.grep import GrepTool
from agent.tools.read import ReadTool
from agent.tools.write import WriteTool
from tests.security.attack_repo import context, make_repo

BYPASSES = ["git status #\ntouch pwned1", "git status <(touch pwned2)",
            "git -c alias.x='!touch pwned3' x", "git status > pwned4"]


def call(name: str, **args) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def test_allow_rule_bypasses_reach_the_user_in_a_session(tmp_path: Path):
    repo = make_repo(tmp_path)
    script = [call("shell", command=c) for c in BYPASSES] + [call("shell", command="git status"),
                                                              "done"]
    opts = SessionOptions(permission_mode="ask", allow=["shell(git *)"],
                          loop=LoopConfig(max_steps=10, gen=GenParams()))
    session = AgentSession(ScriptedBackend(script), repo, None, options=opts)
    session.submit(UserInput("go"))
    asked, deadline = [], time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the session did not finish"
        event = session.next_event(0.05)
        if isinstance(event, ApprovalRequested):
            asked.append(event.args["command"])
            session.submit(ApprovalDecision(event.call_id, "deny"))
        elif isinstance(event, TurnFinished):
            break
    session.submit(Shutdown())
    assert asked == BYPASSES  # each bypass asked; plain `git status` ran under the rule
    assert not list(repo.glob("pwned*"))


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink(outside / "secret.txt", repo / "link.txt")
    os.symlink(outside, repo / "linkdir")
    os.symlink(repo / ".git", repo / "g")
    return repo


OUTSIDE_PATHS = ["../outside/secret.txt", "{outside}/secret.txt", "~/../../etc/passwd",
                 "link.txt", "linkdir/secret.txt", "linkdir", "src/../../outside/secret.txt"]


@pytest.mark.parametrize("template", OUTSIDE_PATHS)
def test_paths_outside_stay_refused_by_every_tool(hostile: Path, template: str):
    path = template.format(outside=hostile.parent / "outside")
    ctx = context(hostile)
    calls = [(ReadTool(), {"path": path}), (WriteTool(), {"path": path, "content": "x"}),
             (EditTool(), {"path": path, "old_string": "secret", "new_string": "x"}),
             (GrepTool(), {"pattern": "secret", "path": path}),
             (GlobTool(), {"pattern": "*", "path": path})]
    for tool, args in calls:
        result = run_tool(tool, args, ctx)
        assert not result.ok and "secret\n" not in result.content, (tool.name, path)
    assert (hostile.parent / "outside/secret.txt").read_text() == "secret\n"


def test_a_search_of_the_whole_repo_does_not_follow_links_out(hostile: Path):
    ctx = context(hostile)
    result = run_tool(GrepTool(), {"pattern": "secret"}, ctx)
    assert result.content.startswith("No matches"), result.content


@pytest.mark.parametrize("path", ["g/config", "g/hooks/pre-commit", ".git/info/../config",
                                  ".Git/config", ".git", "src/../.git/index"])
def test_git_dir_writes_in_every_spelling(hostile: Path, path: str):
    result = run_tool(WriteTool(), {"path": path, "content": "x"}, context(hostile))
    assert not result.ok


@pytest.mark.parametrize("args", [["--exec-path=/tmp"], ["--upload-pack=touch pwned"],
                                  ["--git-dir=/tmp"], ["--work-tree=/"]])
def test_git_code_running_options_stay_refused(hostile: Path, args: list[str]):
    result = run_tool(GitTool(), {"subcommand": "log", "args": args}, context(hostile))
    assert not result.ok and "not allowed" in result.content
    result = run_tool(GitTool(), {"subcommand": "-c", "args": ["alias.x=!touch pwned", "x"]},
                      context(hostile))
    assert not result.ok and not (hostile / "pwned").exists()
