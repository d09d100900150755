"""Permissions: the four modes, allow and deny rules, compound shell commands, path forms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.permissions import Permissions, Rule, split_command

READ = ("read", {"path": "src/app.py"})
EDIT = ("edit", {"path": "src/app.py", "old_string": "a", "new_string": "b"})
SHELL = ("shell", {"command": "pytest -q"})
GIT_STATUS = ("git", {"subcommand": "status"})
GIT_COMMIT = ("git", {"subcommand": "commit", "message": "m"})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("read-only", ["allow", "deny", "deny", "allow", "deny"]),
        ("ask", ["allow", "ask", "ask", "allow", "ask"]),
        ("accept-edits", ["allow", "allow", "ask", "allow", "ask"]),
        ("auto", ["allow", "allow", "allow", "allow", "allow"]),
    ],
)
def test_modes(mode: str, expected: list[str]):
    perms = Permissions(mode)
    calls = [READ, EDIT, SHELL, GIT_STATUS, GIT_COMMIT]
    assert [perms.check(name, args).action for name, args in calls] == expected


def test_deny_rules_win_in_every_mode():
    for mode in ("ask", "accept-edits", "auto"):
        perms = Permissions(mode, allow=["shell", "read"], deny=["shell(rm -rf *)", "read(*.env)"])
        denied = perms.check("shell", {"command": "rm -rf build"})
        assert denied.action == "deny" and "shell(rm -rf *)" in denied.reason
        assert perms.check("read", {"path": "config/.env"}).action == "deny"
        assert perms.check("shell", {"command": "ls"}).action == "allow"


def test_allow_rules_in_ask_mode():
    perms = Permissions("ask", allow=["shell(git *)", "edit(src/**)"])
    assert perms.check("shell", {"command": "git status"}).action == "allow"
    assert perms.check("shell", {"command": "git"}).action == "allow"
    assert perms.check("shell", {"command": "gitk"}).action == "ask"
    assert perms.check("edit", {"path": "src/a/b.py"}).action == "allow"
    assert perms.check("edit", {"path": "tests/b.py"}).action == "ask"


def test_allow_rules_vouch_for_one_simple_command_only():
    perms = Permissions("ask", allow=["shell(git *)", "shell(ls *)"], deny=["shell(rm *)"])
    assert perms.check("shell", {"command": "git status && ls -la | ls"}).action == "ask"
    assert perms.check("shell", {"command": "git status 2>&1"}).action == "allow"
    assert perms.check("shell", {"command": "git status; make"}).action == "ask"
    assert perms.check("shell", {"command": "git log $(make)"}).action == "ask"
    assert perms.check("shell", {"command": "git log `make`"}).action == "ask"
    for hidden in (
        "git status && rm -rf /",
        "ls\nrm x",
        "FOO=1 rm x",
        "sudo rm x",
        "echo $(rm x)",
        "(cd src && rm x)",
        "ls `rm x`",
    ):
        assert perms.check("shell", {"command": hidden}).action == "deny", hidden
    assert perms.check("shell", {"command": 'git commit -m "a; rm x"'}).action == "allow"


def test_paths_are_normalized(tmp_path: Path):
    root = tmp_path / "repo"
    (root / "config").mkdir(parents=True)
    (root / "config/.env").write_text("")
    os.symlink("config/.env", root / "innocent.txt")
    perms = Permissions("auto", deny=["read(config/*)"], root=root)
    for path in (
        "config/.env",
        "./config/.env",
        str(root / "config/.env"),
        "innocent.txt",
        "src/../config/.env",
    ):
        assert perms.check("read", {"path": path}).action == "deny", path
        assert perms.check("read", {"file_path": path}).action == "deny", path
    assert perms.check("read", {"path": "README.md"}).action == "allow"


def test_rules_added_at_runtime():
    perms = Permissions("ask")
    decision = perms.check("shell", {"command": "npm run test"})
    assert decision.action == "ask" and decision.suggested_rule == "shell(npm run *)"
    perms.add_rule(decision.suggested_rule)
    assert perms.check("shell", {"command": "npm run lint"}).action == "allow"
    perms.add_rule("shell(npm run deploy*)", deny=True)
    assert perms.check("shell", {"command": "npm run deploy"}).action == "deny"


def test_suggested_rules():
    perms = Permissions("ask", root="/repo")
    assert perms.suggest_rule("shell", {"command": "pytest -q tests"}) == "shell(pytest *)"
    assert perms.suggest_rule("shell", {"command": "git status"}) == "shell(git status *)"
    assert perms.suggest_rule("shell", {"command": "ls && rm x"}) is None
    assert perms.suggest_rule("shell", {"command": "bash -c ls"}) == "shell(bash -c ls)"
    assert perms.suggest_rule("shell", {"command": "python -m pytest -q"}) == (
        "shell(python -m pytest *)")
    assert perms.suggest_rule("shell", {"command": "env FOO=1 pytest"}) == (
        "shell(env FOO=1 pytest)")
    assert perms.suggest_rule("shell", {"command": "ls [a]*"}) == "shell(ls *)"
    assert perms.suggest_rule("edit", {"path": "./src/a.py"}) == "edit(src/a.py)"
    assert perms.suggest_rule("git", {"subcommand": "commit"}) == "git(commit)"


def test_bad_input():
    perms = Permissions("auto")
    unknown = perms.check("rm", {})
    assert unknown.action == "deny" and "unknown tool" in unknown.reason
    with pytest.raises(ValueError, match="bad permission rule"):
        perms.add_rule("shell(git *")
    with pytest.raises(ValueError, match="unknown permission mode"):
        perms.mode = "yolo"
    assert Rule.parse("edit(src/**)") == Rule("edit", "src/**")
    assert str(Rule.parse(" shell ")) == "shell"
    assert split_command('echo "unbalanced') is None
    assert split_command("a | b && c; d & e") == ["a", "b", "c", "d", "e"]
