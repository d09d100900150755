"""shell: bash commands in their own session, with a timeout that kills everything they started.

Output (stdout and stderr interleaved) is spooled to a file in the workspace's output directory,
not a pipe: a child that keeps the pipe open cannot hang us, a background job's output can be read
while it runs, and a long output stays retrievable after it was cut for the model (the copy kept
in the session is cut too, at `MAX_STORED_OUTPUT_CHARS`). How commands are started, limited and
killed (environment allowlist, rlimits, process trees, the watchdog) is agent/tools/processes.py.
"""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydantic import Field

from agent.tools import reaper
from agent.tools.base import (
    MAX_STORED_OUTPUT_CHARS,
    MAX_TOOL_OUTPUT_CHARS,
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    ToolResult,
    clip_text,
    new_output_path,
)
from agent.tools.processes import (
    ProcessLimits,
    Watchdog,
    child_env,
    limited_argv,
    new_tag,
    wait_or_stop,
)

DEFAULT_TIMEOUT_S = 120.0
MAX_TIMEOUT_S = 600.0
# A runaway command is stopped before it fills the disk.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
POLL_S = 0.02

# Nothing may wait for a human: no editor, pager, prompt or colour codes.
NONINTERACTIVE_ENV = {
    "GIT_EDITOR": "true",
    "EDITOR": "true",
    "VISUAL": "true",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "CI": "1",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
    "GIT_TERMINAL_PROMPT": "0",
    "NO_COLOR": "1",
    "PYTHONUNBUFFERED": "1",
}
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class ShellArgs(ToolArgs):
    command: str = Field(description="The bash command line, run at the repository root.")
    timeout_s: float = Field(
        DEFAULT_TIMEOUT_S,
        gt=0,
        description=(
            f"Seconds before the command is killed (default {DEFAULT_TIMEOUT_S:.0f}, "
            f"max {MAX_TIMEOUT_S:.0f})."
        ),
    )
    background: bool = Field(
        False,
        description=(
            "Start it and return at once with a job id (for servers and watchers); read its output "
            "with shell_output."
        ),
    )


@dataclass
class Job:
    """A background command; `read_upto` is how far shell_output has shown its output."""

    id: int
    command: str
    proc: subprocess.Popen[bytes]
    output: Path
    tag: str
    read_upto: int = 0


class JobTable:
    """The session's commands: how they start (`limits`, the `pass_env` names added to the
    environment allowlist) and end, and the background jobs shell_output reads.

    `kill_grace_s` is how long a command's processes get between SIGTERM and SIGKILL, for
    background jobs and foreground commands alike.
    """

    def __init__(self, kill_grace_s: float = 2.0, *, limits: ProcessLimits | None = None,
                 pass_env: tuple[str, ...] = ()) -> None:
        self.kill_grace_s = kill_grace_s
        self.limits = limits or ProcessLimits()
        self.pass_env = pass_env
        self._jobs: dict[int, Job] = {}
        self._tags: dict[int, str] = {}  # pid of each live command's shell -> its tag
        self._lock = threading.Lock()
        self._watchdog = Watchdog()

    def spawn(self, command: str, cwd: Path, out_path: Path) -> subprocess.Popen[bytes]:
        """Start `command` (see `spawn`), limited, tagged and registered with the watchdog."""
        tag = new_tag()
        env = child_env({**NONINTERACTIVE_ENV, reaper.TAG_VAR: tag}, self.pass_env)
        self._watchdog.register(tag, 0)  # before it runs: we may die the moment it starts
        proc = spawn(limited_argv(command, self.limits), cwd, out_path, env)
        with self._lock:
            self._tags[proc.pid] = tag
        self._watchdog.register(tag, proc.pid)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill everything the command `proc` started: its group, descendants and tagged."""
        tag = self._tags.get(proc.pid, "")
        reaper.kill_job(proc.pid, tag, self.kill_grace_s, leader=proc.pid)
        proc.poll()

    def leftovers(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether processes the (finished) command `proc` started are still running."""
        return bool(reaper.job_pids(proc.pid, self._tags.get(proc.pid, ""), leader=proc.pid))

    def finished(self, proc: subprocess.Popen[bytes]) -> None:
        """The command and all it started are gone: stop tracking it."""
        with self._lock:
            tag = self._tags.pop(proc.pid, None)
        if tag is not None:
            self._watchdog.forget(tag)

    def add(self, command: str, proc: subprocess.Popen[bytes], output: Path) -> Job:
        """Register a started job under the next id."""
        with self._lock:
            job = Job(len(self._jobs) + 1, command, proc, output, self._tags.get(proc.pid, ""))
            self._jobs[job.id] = job
        return job

    def get(self, job_id: int) -> Job:
        """The job, or a ToolError naming the known ids."""
        with self._lock:
            job = self._jobs.get(job_id)
            known = sorted(self._jobs)
        if job is None:
            raise ToolError(f"no background job {job_id}; known jobs: {known or 'none'}")
        return job

    def close(self) -> None:
        """Kill every job's process group (session end)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.kill(job.proc)
            self.finished(job.proc)
        self._watchdog.close()


class Outcome(NamedTuple):
    """How a foreground command ended: its exit code, and why we stopped it (if we did)."""

    exit_code: int | None
    stopped: str | None  # "timed out after N s" | "cancelled" | "output limit" | None
    leftovers: bool  # processes it left running in its group were killed
    pid: int  # of bash, which led the process group


class ShellTool(Tool):
    """Runs bash non-interactively at the repository root; see the module docstring."""

    name = "shell"
    description = (
        "Run a bash command at the repository root and return its output (stdout and stderr "
        f"together) and exit code. Nothing is interactive: stdin is empty, and editors and "
        f"pagers are disabled. Default timeout {DEFAULT_TIMEOUT_S:.0f} s, max "
        f"{MAX_TIMEOUT_S:.0f} s; on timeout the command and its children are killed. Processes "
        "a command leaves running are stopped when it exits: use background=true for servers."
    )
    Args = ShellArgs
    kind = "exec"
    main_arg = "command"

    def __init__(self, jobs: JobTable | None = None) -> None:
        self.jobs = jobs or JobTable()

    def run(self, args: ShellArgs, ctx: ToolContext) -> ToolResult:
        out_path = new_output_path(ctx, "shell")
        proc = self.jobs.spawn(args.command, ctx.workspace.root, out_path)
        if args.background:
            return self._started(self.jobs.add(args.command, proc, out_path))
        timeout = min(args.timeout_s, MAX_TIMEOUT_S)
        outcome = self._wait(proc, timeout, ctx.cancel, out_path)
        notes = []
        if args.timeout_s > MAX_TIMEOUT_S:
            notes.append(f"timeout_s {args.timeout_s:g} is above the maximum; used {timeout:g} s")
        return _result(outcome, read_output(out_path), out_path, notes)

    def _wait(
        self, proc: subprocess.Popen[bytes], timeout: float, cancel: threading.Event, out_path: Path
    ) -> Outcome:
        stopped = _watch(proc, timeout, cancel, out_path)
        leftovers = stopped is None and self.jobs.leftovers(proc)
        if stopped or leftovers:
            self.jobs.kill(proc)
        code = proc.wait()
        self.jobs.finished(proc)
        return Outcome(code, stopped, leftovers, proc.pid)

    def _started(self, job: Job) -> ToolResult:
        text = (
            f"Started background job {job.id} (pid {job.proc.pid}). Read its output with "
            f"shell_output(job_id={job.id}); it is also written to {job.output}."
        )
        meta = {"job_id": job.id, "pid": job.proc.pid, "output_file": str(job.output)}
        return ToolResult(True, text, metadata=meta)

    def close(self) -> None:
        """Kill the background jobs."""
        self.jobs.close()


class ShellOutputArgs(ToolArgs):
    job_id: int = Field(description="The id shell returned for a background command.")
    kill: bool = Field(False, description="Stop the job (its whole process group) first.")


class ShellOutputTool(Tool):
    """Reads what a background job printed since the last look, and its status."""

    name = "shell_output"
    description = (
        "Show the output a background shell job produced since the last shell_output call, "
        "and whether it is still running. kill=true stops it first."
    )
    Args = ShellOutputArgs
    kind = "read"
    main_arg = "job_id"

    def __init__(self, jobs: JobTable) -> None:
        self.jobs = jobs

    def run(self, args: ShellOutputArgs, ctx: ToolContext) -> ToolResult:
        job = self.jobs.get(args.job_id)
        if args.kill:
            self.jobs.kill(job.proc)
        text = read_output(job.output)
        new, job.read_upto = text[job.read_upto :], len(text)
        code = job.proc.poll()
        status = "running" if code is None else _exit_text(code)
        body = clip_text(new, job.output) if new else "(no new output)"
        return ToolResult(
            True,
            f"{body}\n[job {job.id}: {status}]",
            full_output=clip_text(new, job.output, MAX_STORED_OUTPUT_CHARS),
            metadata={"job_id": job.id, "exit_code": code},
        )


def spawn(argv: list[str], cwd: Path, out_path: Path, env: dict[str, str]
          ) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session (so its process group can be killed)."""
    with open(out_path, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def _watch(
    proc: subprocess.Popen[bytes], timeout: float, cancel: threading.Event, out_path: Path
) -> str | None:
    """Wait for the command; the reason to stop it early, or None once it exited by itself."""

    def too_much() -> str | None:
        if out_path.stat().st_size > MAX_OUTPUT_BYTES:
            return f"output passed {MAX_OUTPUT_BYTES // 2**20} MiB"
        return None

    return wait_or_stop(proc, timeout, cancel, POLL_S, too_much)


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in the group `pgid`."""
    return bool(reaper.job_pids(pgid, ""))


def read_output(path: Path) -> str:
    """A spooled output as text, without terminal escape sequences."""
    return _ANSI.sub("", path.read_bytes().decode("utf-8", errors="replace"))


def _result(outcome: Outcome, text: str, out_path: Path, notes: list[str]) -> ToolResult:
    content = clip_text(text, out_path)
    if len(text) <= MAX_TOOL_OUTPUT_CHARS:
        out_path.unlink(missing_ok=True)  # nothing was cut: no need to keep the file
    else:
        out_path.write_text(text, encoding="utf-8")  # what the marker promises: clean text
    if outcome.stopped:
        notes.append(f"{outcome.stopped}: the command and its child processes were killed")
    if outcome.leftovers:
        notes.append("processes it left running were stopped; use background=true for those")
    notes.append(_exit_text(outcome.exit_code))
    meta = {
        "exit_code": outcome.exit_code,
        "stopped": outcome.stopped,
        "pid": outcome.pid,
        "output_file": str(out_path) if out_path.exists() else None,
    }
    ok = outcome.exit_code == 0 and not outcome.stopped
    body = (content.rstrip("\n") or "(no output)") + "\n[" + "; ".join(notes) + "]"
    stored = clip_text(text, out_path, MAX_STORED_OUTPUT_CHARS)
    return ToolResult(ok, body, full_output=stored, metadata=meta)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
