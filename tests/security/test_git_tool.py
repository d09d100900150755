"""The git tool's guards hold against spellings: abbreviated options, a padded subcommand,
paths outside the workspace, --no-index, and read deny rules in show/diff/log."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.permissions import Permissions
from agent.tools import run_tool
from agent.tools.git import GitTool
from tests.security.attack_repo import context, git, make_repo


def git_call(ctx, subcommand: str, *args: str, **extra):
    return run_tool(GitTool(), {"subcommand": subcommand, "args": list(args), **extra}, ctx)


@pytest.mark.parametrize("args", [["--amen"], ["--am"], ["--a", "-m", "x"], ["--amend"],
                                  ["--fixup=amend:HEAD"], ["--fix=reword:HEAD"]])
def test_commit_amend_is_refused_in_every_abbreviation(tmp_path: Path, args: list[str]):
    repo = make_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    result = git_call(context(repo), "commit", *args, message="x")
    assert not result.ok and "not allowed" in result.content
    assert git(repo, "rev-parse", "HEAD") == head


@pytest.mark.parametrize("args", [["--no-index", "/dev/null", "/etc/passwd"],
                                  ["--no-ind", "/dev/null", "/etc/passwd"],
                                  ["/dev/null", "/etc/passwd"],
                                  ["--", "../outside.txt"],
                                  ["HEAD:../outside.txt"],
                                  ["--outp=/tmp/x"], ["--out", "/tmp/x"],
                                  ["-O/etc/passwd"]])
def test_diff_cannot_read_or_write_outside(tmp_path: Path, args: list[str]):
    repo = make_repo(tmp_path)
    (tmp_path / "outside.txt").write_text("secret\n")
    result = git_call(context(repo), "diff", *args)  # refused by the tool itself, in any mode
    assert not result.ok and "secret" not in result.content
    assert "not allowed" in result.content or "outside the workspace" in result.content


def test_a_padded_subcommand_meets_the_same_rules(tmp_path: Path):
    perms = Permissions("auto", deny=["git(commit)"], root=tmp_path)
    for spelling in ("commit", " commit", "commit ", "\tcommit\n"):
        decision = perms.check("git", {"subcommand": spelling, "message": "m"})
        assert decision.action == "deny", repr(spelling)
    assert Permissions("read-only").check("git", {"subcommand": " commit ", "message": "m"}
                                          ).action == "deny"
    assert Permissions("read-only").check("git", {"subcommand": " status"}).action == "allow"


def test_read_deny_rules_hold_in_git_show_diff_and_log(tmp_path: Path):
    repo = make_repo(tmp_path, {".env": "TOKEN=hunter2\n", "app.py": "x = 1\n",
                                "sub/.env": "TOKEN=sub-secret\n"})
    (repo / ".env").write_text("TOKEN=changed-secret\n")
    (repo / "app.py").write_text("x = 2\n")
    perms = Permissions("auto", deny=["read(*.env)"], root=repo)
    ctx = context(repo)
    ctx.read_policy = perms
    for args in (["HEAD:.env"], ["HEAD:./.env"], ["HEAD:sub/.env"], [":.env"]):
        assert perms.check("git", {"subcommand": "show", "args": args}).action == "deny", args
        result = git_call(ctx, "show", *args)
        assert not result.ok and "secret" not in result.content and "hunter2" not in result.content
    for sub, args in (("show", ["HEAD"]), ("diff", []), ("diff", ["HEAD"]), ("log", ["-p"]),
                      ("diff", ["--", "."]), ("diff", ["app.py"]), ("log", ["-p", "--", "app.py"])):
        result = git_call(ctx, sub, *args)
        assert result.ok, (sub, args, result.content)
        assert "hunter2" not in result.content and "secret" not in result.content, (sub, args)
    assert "x = 2" in git_call(ctx, "diff").content
    assert perms.check("git", {"subcommand": "diff", "args": ["--", ".env"]}).action == "deny"


def test_commit_message_files_must_stay_inside(tmp_path: Path):
    repo = make_repo(tmp_path)
    (tmp_path / "outside.txt").write_text("secret\n")
    (repo / "README.md").write_text("changed\n")
    for args in (["-a", "-F", "../outside.txt"], ["-a", "--file=../outside.txt"],
                 ["-a", "--fil", "/etc/hostname"], ["-a", "-t", "/etc/hostname", "-m", "x"]):
        result = git_call(context(repo), "commit", *args)
        assert not result.ok and "outside the workspace" in result.content, args
    assert "secret" not in git(repo, "log", "--format=%B")
