"""How shell commands are started and ended: environment, limits, process trees, the watchdog.

Each command runs in its own session and process group, with an environment built from an
allowlist (PATH, HOME, LANG, ... and the names the user passes), never the agent's whole
environment (tokens and keys stay out), plus a tag (`AGENT_JOB`) that lets agent/tools/reaper.py
find processes that left the group. `RLIMIT_NPROC` and `RLIMIT_AS` are set by an outer bash that
then execs the command's bash, so they hold from its first instruction and for all it runs. A
watchdog process (reaper.py) kills what is still registered when this process ends in any way.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from agent.tools import reaper

log = logging.getLogger(__name__)

# What a command sees of the agent's environment, besides the names the user passes.
BASE_ENV_ALLOWLIST = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
    "VIRTUAL_ENV", "CONDA_PREFIX", "SSL_CERT_FILE", "SSL_CERT_DIR",
)
_ENV_PREFIX_ALLOWLIST = ("LC_",)
DEFAULT_MAX_PROCS = 4096
_PROC_HEADROOM = 256  # above what the user already runs: a limit below that blocks every fork


@dataclass(frozen=True)
class ProcessLimits:
    """Per-command limits: `max_procs` (RLIMIT_NPROC, counted per user), `max_memory_bytes`
    (RLIMIT_AS, per process); None leaves a limit as it is."""

    max_procs: int | None = DEFAULT_MAX_PROCS
    max_memory_bytes: int | None = None  # None: twice the machine's physical memory; 0: none

    def resolved_memory(self) -> int | None:
        """The address-space limit to apply, or None for no limit.

        The default is twice the physical memory: CUDA maps device memory into the address
        space (measured on an H200: a 100 GB device tensor needs 100 GB of RLIMIT_AS), so a
        GPU job must fit device and host memory under it."""
        if self.max_memory_bytes is not None:
            return self.max_memory_bytes or None
        try:
            return 2 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def child_env(extra: Mapping[str, str], pass_env: Iterable[str] = (),
              source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a command: allowlisted names from `source` (default: ours), the
    names in `pass_env`, then `extra` on top."""
    source = os.environ if source is None else source
    names = set(BASE_ENV_ALLOWLIST) | set(pass_env)
    env = {k: v for k, v in source.items() if k in names or k.startswith(_ENV_PREFIX_ALLOWLIST)}
    return {**env, **extra}


def limited_argv(command: str, limits: ProcessLimits) -> list[str]:
    """bash running `command` under `limits`: an outer bash sets them (soft and hard, so the
    command cannot raise them) and execs the real one, before any of the command runs."""
    settings = []
    memory = limits.resolved_memory()
    if memory is not None:
        settings.append(("-v", _capped(resource.RLIMIT_AS, memory) // 1024))
    if limits.max_procs is not None:
        floor = _user_procs() + _PROC_HEADROOM
        settings.append(("-u", _capped(resource.RLIMIT_NPROC, max(limits.max_procs, floor))))
    prelude = "".join(f"ulimit {flag} {value} 2>/dev/null; " for flag, value in settings)
    return ["bash", "-c", prelude + 'exec bash -c "$0"', command]


def _capped(which: int, value: int) -> int:
    _, hard = resource.getrlimit(which)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _user_procs() -> int:
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


class Watchdog:
    """The reaper.py process beside this one, started on first use: jobs are registered with
    it and it kills those still registered when this process ends (even by SIGKILL)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def register(self, tag: str, pgid: int) -> None:
        """Have the watchdog kill job `tag` (group `pgid`) if we die before it ends."""
        self._send(f"add {tag} {pgid}\n")

    def forget(self, tag: str) -> None:
        """The job ended (or was killed by us)."""
        self._send(f"del {tag}\n")

    def close(self) -> None:
        """Stop the watchdog; it kills whatever is still registered."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait(timeout=10)

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                self._started().stdin.write(line)
                self._proc.stdin.flush()
            except (OSError, ValueError) as e:  # it died: jobs are then only ours to kill
                log.warning("the process watchdog is gone (%s); starting a new one", e)
                self._proc = None

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(reaper.__file__))],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                text=True, start_new_session=True, close_fds=True,
            )
        return self._proc


def wait_or_stop(proc: subprocess.Popen[bytes], timeout_s: float, cancel: threading.Event,
                 poll_s: float, check: Callable[[], str | None] | None = None) -> str | None:
    """Wait for `proc` to exit; the reason to stop it early ("cancelled", "timed out after N s",
    or what `check` returns), or None once it exited by itself."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if cancel.wait(poll_s):
            return "cancelled"
        if time.monotonic() > deadline:
            return f"timed out after {timeout_s:g} s"
        reason = check() if check else None
        if reason:
            return reason
    return None


class Captured(NamedTuple):
    """How a `run_captured` command ended."""

    exit_code: int | None  # None: killed at the timeout
    stdout: bytes
    stderr: bytes


def run_captured(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float,
                 grace_s: float = 1.0) -> Captured:
    """Run `argv` in its own session with the environment `env` (tagged), capturing its output;
    at the timeout it and everything it started (hooks, helpers) are killed."""
    tag = new_tag()
    proc = subprocess.Popen(argv, cwd=cwd, env={**env, reaper.TAG_VAR: tag},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        reaper.kill_job(proc.pid, tag, grace_s, leader=proc.pid)
        out, err = proc.communicate()
        code = None
    if reaper.job_pids(proc.pid, tag):  # a hook left something running
        reaper.kill_job(proc.pid, tag, grace_s)
    return Captured(code, out, err)


def new_tag() -> str:
    """A fresh job tag."""
    return uuid.uuid4().hex[:16]
