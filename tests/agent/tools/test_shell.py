"""shell: non-interactive runs, huge output, timeouts that kill the whole group, background jobs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.tools.base import ToolContext, run_tool
from agent.tools.shell import JobTable, ShellOutputTool, ShellTool, group_alive


@pytest.fixture
def jobs():
    table = JobTable(kill_grace_s=0.3)
    yield table
    table.close()


def sh(ctx: ToolContext, jobs: JobTable, command: str, **args):
    return run_tool(ShellTool(jobs), {"command": command, **args}, ctx)


def test_output_exit_code_and_cwd(tool_ctx: ToolContext, jobs: JobTable, git_repo: Path):
    ok = sh(tool_ctx, jobs, "pwd; echo out; echo err >&2")
    assert ok.ok and ok.content == f"{git_repo}\nout\nerr\n[exit code 0]"
    assert ok.metadata["exit_code"] == 0 and ok.metadata["output_file"] is None
    bad = sh(tool_ctx, jobs, "exit 3")
    assert not bad.ok and bad.content == "(no output)\n[exit code 3]"


def test_environment_is_non_interactive(tool_ctx: ToolContext, jobs: JobTable):
    result = sh(tool_ctx, jobs, "echo $GIT_EDITOR $PAGER $GIT_PAGER $CI $TERM $DEBIAN_FRONTEND")
    assert result.content.startswith("true cat cat 1 dumb noninteractive")


def test_interactive_commands_get_eof(tool_ctx: ToolContext, jobs: JobTable):
    start = time.monotonic()
    assert sh(tool_ctx, jobs, "read x; echo got=$?").content.startswith("got=1")
    py = sh(tool_ctx, jobs, "python3 -c 'input()'", timeout_s=5)
    assert not py.ok and "EOFError" in py.content
    assert time.monotonic() - start < 5


def test_git_commit_without_message_does_not_hang(
    tool_ctx: ToolContext, jobs: JobTable, git_repo: Path
):
    (git_repo / "README.md").write_text("changed\n")
    result = sh(tool_ctx, jobs, "git commit -a", timeout_s=5)
    assert not result.ok and result.metadata["stopped"] is None
    assert "empty commit message" in result.content


def test_huge_output_is_cut_and_kept(tool_ctx: ToolContext, jobs: JobTable):
    command = "for i in $(seq 1 20000); do echo line-$i-xxxxxxxx; done"
    result = sh(tool_ctx, jobs, command)
    assert result.ok and len(result.content) < 31_000
    assert result.content.startswith("line-1-") and "line-20000-" in result.content
    assert "chars omitted; the full output" in result.content
    saved = Path(result.metadata["output_file"])
    assert str(saved) in result.content
    assert saved.read_text() == result.full_output
    assert result.full_output.count("\n") == 20000
    # the model can page through the spilled file with read
    from agent.tools.read import ReadTool

    page = run_tool(ReadTool(), {"path": str(saved), "offset": 12345, "limit": 1}, tool_ctx)
    assert page.ok and page.content.startswith(" 12345\tline-12345-xxxxxxxx\n")


def test_timeout_kills_the_whole_group(tool_ctx: ToolContext, jobs: JobTable, git_repo: Path):
    # the child ignores SIGTERM, so only the SIGKILL after the grace period ends it
    command = "(trap '' TERM; sleep 30) & echo $! > child.pid; sleep 30"
    start = time.monotonic()
    result = sh(tool_ctx, jobs, command, timeout_s=1)
    assert time.monotonic() - start < 5
    assert not result.ok and "timed out after 1 s" in result.content
    assert result.metadata["stopped"].startswith("timed out")
    assert not group_alive(result.metadata["pid"])
    child = int((git_repo / "child.pid").read_text())
    assert not _alive(child)


def test_cancel_kills_the_command(tool_ctx: ToolContext, jobs: JobTable):
    tool_ctx.cancel.set()
    result = sh(tool_ctx, jobs, "sleep 30")
    assert not result.ok and "cancelled" in result.content
    assert not group_alive(result.metadata["pid"])


def test_leftover_processes_are_stopped(tool_ctx: ToolContext, jobs: JobTable):
    result = sh(tool_ctx, jobs, "sleep 30 & echo started")
    assert result.content.startswith("started") and "use background=true" in result.content
    assert not group_alive(result.metadata["pid"])


def test_timeout_is_clamped(tool_ctx: ToolContext, jobs: JobTable):
    result = sh(tool_ctx, jobs, "true", timeout_s=5000)
    assert result.ok and "timeout_s 5000 is above the maximum; used 600 s" in result.content
    assert not sh(tool_ctx, jobs, "true", timeout_s=0).ok


def test_background_job(tool_ctx: ToolContext, jobs: JobTable, git_repo: Path):
    command = "echo first; until [ -e go ]; do sleep 0.02; done; echo second; sleep 30"
    started = sh(tool_ctx, jobs, command, background=True)
    assert started.ok and started.metadata["job_id"] == 1
    output = ShellOutputTool(jobs)
    assert _output_until(output, tool_ctx, "first") == "first\n\n[job 1: running]"
    (git_repo / "go").touch()
    assert _output_until(output, tool_ctx, "second") == "second\n\n[job 1: running]"
    killed = run_tool(output, {"job_id": 1, "kill": True}, tool_ctx)
    assert "(no new output)" in killed.content and "killed by signal" in killed.content
    assert not group_alive(started.metadata["pid"])
    missing = run_tool(output, {"job_id": 7}, tool_ctx)
    assert not missing.ok and "no background job 7; known jobs: [1]" in missing.content


def _output_until(output: ShellOutputTool, ctx: ToolContext, text: str) -> str:
    """shell_output of job 1, polled until `text` shows (only new output comes back each time)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        content = run_tool(output, {"job_id": 1}, ctx).content
        if text in content:
            return content
        assert content.startswith("(no new output)"), content
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never showed")


def test_closing_stops_background_jobs(tool_ctx: ToolContext, jobs: JobTable):
    started = sh(tool_ctx, jobs, "sleep 30", background=True)
    jobs.close()
    assert not group_alive(started.metadata["pid"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
