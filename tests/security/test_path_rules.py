"""Path deny rules (`read(*.env)`) hold in every tool that shows contents and in the snapshot."""

from __future__ import annotations

from pathlib import Path

from agent.permissions import Permissions
from agent.repo_snapshot import take_snapshot
from agent.tools import run_tool
from agent.tools.grep import GrepTool
from tests.security.attack_repo import context, make_repo

FILES = {".env": "TOKEN=hunter2\n", "config/prod.env": "TOKEN=hunter3\n", "app.py": "TOKEN = 1\n"}


def test_grep_skips_denied_files(tmp_path: Path):
    repo = make_repo(tmp_path, FILES)
    perms = Permissions("auto", deny=["read(*.env)"], root=repo)
    ctx = context(repo)
    ctx.read_policy = perms
    result = run_tool(GrepTool(), {"pattern": "TOKEN"}, ctx)
    assert result.ok and "app.py:1:TOKEN = 1" in result.content
    assert "hunter" not in result.content
    for path in (".env", "config/prod.env", "./config/../.env"):
        assert perms.check("grep", {"pattern": "x", "path": path}).action == "deny", path
        direct = run_tool(GrepTool(), {"pattern": "TOKEN", "path": path}, ctx)
        assert not direct.ok and "hunter" not in direct.content


def test_read_rules_cover_shell_arguments_and_edit_rules_cover_write(tmp_path: Path):
    repo = make_repo(tmp_path, FILES)
    perms = Permissions("auto", deny=["read(*.env)", "edit(vendor/**)"], root=repo)
    for command in ("cat .env", "head -n1 config/prod.env", "bash -c 'cat .env'",
                    "cp ./.env /tmp/x", "cat .e*", "cat config/*", "tail **/*.env"):
        assert perms.check("shell", {"command": command}).action == "deny", command
    assert perms.check("shell", {"command": "cat app.py"}).action == "allow"
    assert perms.check("shell", {"command": "cat *.py"}).action == "allow"
    assert perms.check("write", {"path": "vendor/lib.py", "content": ""}).action == "deny"
    assert perms.check("edit", {"path": "vendor/lib.py", "old_string": "a",
                                "new_string": "b"}).action == "deny"


def test_the_snapshot_leaves_denied_files_out(tmp_path: Path):
    repo = make_repo(tmp_path, FILES)
    perms = Permissions("auto", deny=["read(*.env)"], root=repo)
    snap = take_snapshot(repo, lambda text: len(text) // 4, 10_000, may_read=perms.may_read)
    assert "hunter" not in snap.text and ".env" not in snap.text
    assert "app.py" in snap.text
    assert perms.may_read("app.py") and not perms.may_read(repo / "config/prod.env")


def test_a_session_with_a_read_deny_rule_never_shows_the_file(tmp_path: Path):
    import time

    from agent.backends.base import GenParams
    from agent.backends.scripted import ScriptedBackend
    from agent.events import Shutdown, ToolCallFinished, UserInput
    from agent.loop import LoopConfig
    from agent.session import AgentSession, SessionOptions

    repo = make_repo(tmp_path, FILES)
    seen: list[str] = []

    def grep_step(messages):
        seen.extend(str(m.get("content", "")) for m in messages)
        return '<tool_call>{"name": "grep", "arguments": {"pattern": "TOKEN"}}</tool_call>'

    backend = ScriptedBackend([grep_step, "done"])
    opts = SessionOptions(permission_mode="auto", deny=["read(*.env)"],
                          loop=LoopConfig(max_steps=4, gen=GenParams()))
    session = AgentSession(backend, repo, None, options=opts)
    session.submit(UserInput("find the token"))
    session.submit(Shutdown())
    events, deadline = [], time.monotonic() + 30
    while not session.closed:
        assert time.monotonic() < deadline, events[-3:]
        e = session.next_event(0.05)
        events += [e] if e is not None else []
    while (e := session.next_event(0)) is not None:
        events.append(e)
    results = [e for e in events if isinstance(e, ToolCallFinished)]
    assert results and "app.py:1:TOKEN = 1" in results[0].content
    assert seen and not any("hunter" in text for text in seen)
    assert not any("hunter" in r.content for r in results)


def test_the_outside_changes_note_leaves_denied_files_out(tmp_path: Path):
    from agent.external_changes import ExternalChanges

    repo = make_repo(tmp_path, FILES)
    perms = Permissions("auto", deny=["read(*.env)"], root=repo)
    watcher = ExternalChanges(repo, "s1", read_policy=perms)
    watcher.mark_seen()
    (repo / ".env").write_text("TOKEN=new-hunter\n")
    (repo / "app.py").write_text("TOKEN = 2\n")
    watcher._dirty.update({".env", "app.py"})
    note = watcher.note()
    assert note is not None and "TOKEN = 2" in note and "hunter" not in note
