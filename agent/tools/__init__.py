"""Tools the model can call (read, edit, write, grep, glob, shell, shell_output, git, task).

Files:
- base.py: the Tool contract, ToolResult, ToolContext, FileStateTracker, run_tool, output clipping.
- read.py: numbered lines of a text file, or a directory listing.
- edit.py: exact-string replacement in a file already read; diff helpers shared with write.
- write.py: create a file, or overwrite one already read.
- grep.py: regex search over non-ignored text files, run in a killable worker process.
- grep_worker.py: that worker (a standard-library script).
- glob.py: file-name patterns (`**`, `{a,b}`), newest first; the glob-to-regex translator.
- shell.py: bash in its own process group, timeouts, spooled output, background jobs and
  shell_output.
- processes.py: how commands start and end: environment allowlist, rlimits, the watchdog.
- reaper.py: process trees (group, descendants, tag) and the watchdog script.
- git.py: status, diff, log, show, commit, with the commands' environment and lifetime rules.
- git_args.py: git arguments checked by what git makes of them; read-deny excludes.
- task.py: hand a piece of work to a sub-agent forked from the context (the session's host
  runs it); not in default_tools: the session adds it.

The sandbox (agent/workspace.py), permissions (agent/permissions.py) and checkpoints
(agent/checkpoint.py) sit beside this package.
"""

from __future__ import annotations

from agent.tools.base import Tool, ToolContext, ToolResult, run_tool
from agent.tools.edit import EditTool
from agent.tools.git import GitTool
from agent.tools.glob import GlobTool
from agent.tools.grep import GrepTool
from agent.tools.processes import ProcessLimits
from agent.tools.read import ReadTool
from agent.tools.shell import JobTable, ShellOutputTool, ShellTool
from agent.tools.write import WriteTool

__all__ = ["Tool", "ToolContext", "ToolResult", "default_tools", "run_tool"]


def default_tools(*, kill_grace_s: float = 2.0, limits: ProcessLimits | None = None,
                  pass_env: tuple[str, ...] = ()) -> list[Tool]:
    """A fresh set of the standard tools for one session, in a stable order (it is part of the
    cached prompt prefix). Call `close()` on each at session end: shell stops its jobs.
    `limits` and `pass_env` shape how shell commands run (agent/tools/processes.py)."""
    jobs = JobTable(kill_grace_s, limits=limits, pass_env=pass_env)
    return [
        ReadTool(),
        EditTool(),
        WriteTool(),
        GrepTool(),
        GlobTool(),
        ShellTool(jobs),
        ShellOutputTool(jobs),
        GitTool(pass_env),
    ]
