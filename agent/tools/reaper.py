"""Process trees of shell commands: finding and killing every process a command started.

A command's processes are its process group, the descendants of its shell, and every process
that carries its tag in the environment (`AGENT_JOB=<tag>`): `setsid` or a double fork leaves
the group, but not the environment. `kill_job` signals all three.

Run as a script (standard library only), this module is the watchdog one agent process keeps
beside it: it reads `add <tag> <pgid>` / `del <tag>` lines on stdin (pgid 0: not started yet,
known by its tag only) and, when stdin closes (the
agent exited, was killed, or crashed), kills every job still registered. A SIGTERM'd agent
therefore leaves no command running.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TAG_VAR = "AGENT_JOB"
POLL_S = 0.02


def job_pids(pgid: int, tag: str, leader: int | None = None) -> set[int]:
    """Live (non-zombie) processes of a job: its group, its leader's descendants, its tag."""
    procs = _processes()
    found = {pid for pid, (ppid, group, state) in procs.items()
             if pgid > 0 and group == pgid and state not in (b"Z", b"X")}
    if leader is not None:
        found |= _descendants(procs, leader)
    found |= _tagged(procs, tag)
    found.discard(os.getpid())
    return found


def kill_job(pgid: int, tag: str, grace_s: float, leader: int | None = None) -> bool:
    """SIGTERM the job's processes, then SIGKILL what is left after `grace_s`; whether any
    process was found to signal."""
    any_found = False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        pids = job_pids(pgid, tag, leader)
        if not pids:
            break
        any_found = True
        _signal_all(pgid, pids, sig)
        deadline = time.monotonic() + wait_s
        while job_pids(pgid, tag, leader) and time.monotonic() < deadline:
            time.sleep(POLL_S * 5)
    return any_found


def _signal_all(pgid: int, pids: set[int], sig: int) -> None:
    try:
        if pgid > 0:  # 0 would be our own group
            os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _processes() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (ppid, pgid, state) of every process we can see."""
    procs = {}
    if not os.path.isdir("/proc"):
        return procs
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it exited while we looked
        # the command name may hold spaces and parentheses: fields start after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2:
            procs[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return procs


def _descendants(procs: dict[int, tuple[int, int, bytes]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, state) in procs.items():
        if state not in (b"Z", b"X"):
            children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _tagged(procs: dict[int, tuple[int, int, bytes]], tag: str) -> set[int]:
    if not tag:
        return set()
    needle = f"{TAG_VAR}={tag}".encode()
    found = set()
    for pid, (_, _, state) in procs.items():
        if state in (b"Z", b"X"):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.add(pid)
        except OSError:
            continue  # another user's process, or gone
    return found


def watch(lines, grace_s: float = 1.0) -> None:
    """The watchdog's loop: track jobs from `lines`; kill those left when it ends."""
    jobs: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "add":
            jobs[parts[1]] = int(parts[2])
        elif len(parts) == 2 and parts[0] == "del":
            jobs.pop(parts[1], None)
    for tag, pgid in jobs.items():
        kill_job(pgid, tag, grace_s)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the agent is not for us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(sys.stdin)
