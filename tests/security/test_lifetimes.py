"""Lifetimes and limits: setsid children die with their command, at its timeout and when the
agent is killed; commands see an allowlisted environment and run under rlimits; the stored copy
of a huge output is capped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.tools import run_tool
from agent.tools.base import MAX_STORED_OUTPUT_CHARS
from agent.tools.processes import ProcessLimits, child_env
from agent.tools.shell import JobTable, ShellTool
from tests.security.attack_repo import context, make_repo

ESCAPE = "setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' > /dev/null 2>&1 &"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def read_pid(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


@pytest.fixture
def jobs():
    table = JobTable(kill_grace_s=0.3)
    yield table
    table.close()


def test_a_setsid_child_dies_at_the_commands_timeout(tmp_path: Path, jobs: JobTable):
    ctx, pidfile = context(make_repo(tmp_path)), tmp_path / "pid"
    command = ESCAPE.format(pidfile=pidfile) + " sleep 100"
    result = run_tool(ShellTool(jobs), {"command": command, "timeout_s": 1}, ctx)
    assert not result.ok and "timed out" in result.content
    assert wait_dead(read_pid(pidfile), 5)


def test_a_setsid_child_left_behind_is_stopped(tmp_path: Path, jobs: JobTable):
    ctx, pidfile = context(make_repo(tmp_path)), tmp_path / "pid"
    command = ESCAPE.format(pidfile=pidfile) + f" while [ ! -s {pidfile} ]; do sleep 0.01; done"
    result = run_tool(ShellTool(jobs), {"command": command}, ctx)
    assert "left running were stopped" in result.content
    assert wait_dead(read_pid(pidfile), 5)


def test_background_jobs_and_their_escapees_die_when_the_session_closes(tmp_path: Path):
    table = JobTable(kill_grace_s=0.3)
    ctx, pidfile = context(make_repo(tmp_path)), tmp_path / "pid"
    command = ESCAPE.format(pidfile=pidfile) + " sleep 300"
    assert run_tool(ShellTool(table), {"command": command, "background": True}, ctx).ok
    pid = read_pid(pidfile)
    table.close()
    assert wait_dead(pid, 5)


AGENT = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from agent.tools import run_tool
    from agent.tools.base import ToolContext
    from agent.tools.shell import JobTable, ShellTool
    from agent.workspace import Workspace
    repo, pidfile = Path(sys.argv[1]), sys.argv[2]
    ctx = ToolContext(Workspace(repo))
    command = ("setsid sh -c 'echo $$ > " + pidfile + "; exec sleep 300' >/dev/null 2>&1 & "
               "echo $$ > " + pidfile + ".fg; sleep 300")
    run_tool(ShellTool(JobTable()), {"command": command, "timeout_s": 600}, ctx)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killing_the_agent_kills_its_foreground_command(tmp_path: Path, sig: int):
    repo, pidfile = make_repo(tmp_path), tmp_path / "pid"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(repo), str(pidfile)],
                             cwd=Path(__file__).parents[2])
    try:
        escaped, foreground = read_pid(pidfile, 30), read_pid(Path(f"{pidfile}.fg"), 30)
        agent.send_signal(sig)
        agent.wait(10)
        assert wait_dead(foreground, 30), "the foreground command outlived the agent"
        assert wait_dead(escaped, 30), "its setsid child outlived the agent"
    finally:
        agent.kill()


def test_commands_see_only_allowlisted_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("MY_TOOL_HOME", "/opt/tool")
    ctx = context(make_repo(tmp_path))
    table = JobTable(kill_grace_s=0.3)
    shown = run_tool(ShellTool(table), {"command": "env"}, ctx).content
    assert "ghp_secret" not in shown and "MY_TOOL_HOME" not in shown
    assert "PATH=" in shown and "HOME=" in shown
    table.close()
    table = JobTable(kill_grace_s=0.3, pass_env=("MY_TOOL_HOME",))
    shown = run_tool(ShellTool(table), {"command": "echo $MY_TOOL_HOME"}, ctx).content
    assert shown.startswith("/opt/tool")
    table.close()
    assert "GITHUB_TOKEN" not in child_env({}, source={"GITHUB_TOKEN": "x", "LC_ALL": "C"})


def test_commands_run_under_memory_and_process_limits(tmp_path: Path):
    ctx = context(make_repo(tmp_path))
    table = JobTable(kill_grace_s=0.3, limits=ProcessLimits(max_procs=5000,
                                                            max_memory_bytes=512 * 2**20))
    shown = run_tool(ShellTool(table), {"command": "ulimit -v; ulimit -u"}, ctx).content
    lines = shown.splitlines()
    assert lines[0] == str(512 * 1024) and lines[1] != "unlimited"
    hog = run_tool(ShellTool(table), {"command": "python3 -c 'bytearray(2 * 1024**3)'"}, ctx)
    assert not hog.ok and "MemoryError" in hog.content
    table.close()
    default = JobTable(kill_grace_s=0.3)
    shown = run_tool(ShellTool(default), {"command": "ulimit -v; ulimit -u"}, ctx).content
    assert "unlimited" not in shown
    default.close()


def test_the_stored_copy_of_a_huge_output_is_capped(tmp_path: Path, jobs: JobTable):
    ctx = context(make_repo(tmp_path))
    command = "head -c 5000000 /dev/zero | tr '\\0' a"
    result = run_tool(ShellTool(jobs), {"command": command}, ctx)
    assert result.ok and len(result.full_output) < MAX_STORED_OUTPUT_CHARS + 1000
    kept = Path(result.metadata["output_file"])
    assert kept.stat().st_size == 5_000_000 and str(kept) in result.full_output
    assert os.path.dirname(kept) == str(ctx.workspace.output_dir)


def test_the_limit_and_environment_flags_reach_the_session_options():
    from cli import build_parser
    from cli.common import UsageError
    from cli.sandbox_flags import sandbox_options

    parse = build_parser().parse_args
    options = sandbox_options(parse(["run", "x", "--pass-env", "MY_VAR", "--max-memory", "32G",
                                     "--max-procs", "100"]))
    assert options["pass_env"] == ["MY_VAR"]
    assert options["process_limits"] == ProcessLimits(max_procs=100, max_memory_bytes=32 * 2**30)
    assert sandbox_options(parse(["run", "x", "--max-memory", "0"]))[
        "process_limits"].resolved_memory() is None
    for bad in (["--pass-env", "A=B"], ["--max-procs", "0"], ["--max-memory", "lots"]):
        with pytest.raises(UsageError):
            sandbox_options(parse(["tui", *bad]))


def test_git_hooks_get_the_allowlisted_environment_and_are_killed_with_git(tmp_path: Path,
                                                                           monkeypatch):
    from agent.tools.git import GitTool
    from tests.security.attack_repo import git

    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    repo, pidfile = make_repo(tmp_path), tmp_path / "pid"
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\nenv > env.txt\n"
                    f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 &\n"
                    "sleep 300\n")
    hook.chmod(0o755)
    (repo / "README.md").write_text("changed\n")
    ctx = context(repo)
    start = time.monotonic()
    result = run_tool(GitTool(timeout_s=2), {"subcommand": "commit", "args": ["-a"],
                                             "message": "m"}, ctx)
    assert not result.ok and "timed out" in result.content
    assert time.monotonic() - start < 10
    assert wait_dead(read_pid(pidfile), 5)
    seen = (repo / "env.txt").read_text()
    assert "ghp_secret" not in seen and "PATH=" in seen
    assert git(repo, "log", "--format=%s") == "initial\n"
