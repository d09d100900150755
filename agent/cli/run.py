"""`agent run`: a headless agent session on a repository, for people and for scripts."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from agent.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TURN_LIMIT,
    UsageError,
    add_model_flags,
    apply_dirs,
    err,
    model_options,
    out,
    out_json,
)
from agent.cli.sandbox_flags import add_sandbox_flags, sandbox_options
from server import cli as serve

MODES = ["read-only", "ask", "accept-edits", "auto"]


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the agent on a task without the TUI",
        description="Run one task headless. Tool calls that would need approval are denied "
        "(there is nobody to ask): widen with --permission-mode auto or --allow RULE.",
    )
    p.add_argument("task", nargs="?", help="what to do ('-': read it from stdin)")
    p.add_argument("--repo", default=".", help="repository root (default: .)")
    add_model_flags(p)
    serve.add_server_flag(p)
    add_session_flags(p)
    p.add_argument("--max-turns", type=int, default=12,
                   help="model calls allowed for this task (exit 3 when reached, or when the "
                   "context window is full; 130 when interrupted)")
    p.add_argument("--max-tokens", type=int, default=1024, help="tokens per model reply")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (with --temperature)")
    p.add_argument("--permission-mode", choices=MODES, default="accept-edits")
    p.add_argument("--allow", action="append", default=[], metavar="RULE",
                   help="allow rule, e.g. 'shell(pytest *)' (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="RULE",
                   help="deny rule, e.g. 'shell(rm *)' (repeatable)")
    p.add_argument("--tool-choice", choices=["auto", "required", "first", "chain", "none"],
                   default=None,
                   help="auto: the model decides; first: its first reply each turn calls a tool "
                   "and the next answers; chain: explore, then edit for tasks that ask for a "
                   "change, then answer (the default for models whose template has no tools)")
    add_sandbox_flags(p)
    p.add_argument("--output-format", choices=["text", "json", "stream-json"], default="text")
    p.add_argument("--resume", metavar="ID", help="continue the session with this id (or prefix)")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="continue the most recent session of this repository")
    p.set_defaults(func=run)


def add_session_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="session store (env AGENT_DATA_DIR)")


def open_store():
    from memory.store import SessionStore
    from runtime import settings

    return SessionStore(settings.data_dir())


def resolve_resume(store, args: argparse.Namespace, repo: Path) -> str | None:
    if args.resume:
        return store.get(args.resume).id
    if args.cont:
        latest = store.latest(str(repo))
        if latest is None:
            raise UsageError(f"no earlier session for {repo}; start one without --continue")
        return latest.id
    return None


def run(args: argparse.Namespace) -> int:
    from agent.backends import open_backend
    from agent.backends.base import GenParams
    from agent.loop import LoopConfig
    from agent.session import AgentSession, SessionOptions

    task = sys.stdin.read() if args.task == "-" else args.task
    if not task:
        raise UsageError("give a task: agent run --repo . \"fix the failing test\"")
    repo = Path(args.repo).resolve()
    if not repo.is_dir():
        raise UsageError(f"--repo {args.repo} is not a directory")
    apply_dirs(args)
    store = open_store()
    resume = resolve_resume(store, args, repo)
    backend = open_backend(args.model, **model_options(args), server=args.server,
                           progress=sys.stderr.isatty())
    options = SessionOptions(permission_mode=args.permission_mode, allow=args.allow,
                             deny=args.deny, title=task[:80], task=task,
                             loop=LoopConfig(max_steps=args.max_turns,
                                             gen=GenParams(max_tokens=args.max_tokens,
                                                           temperature=args.temperature,
                                                           seed=args.seed),
                                             tool_choice=args.tool_choice),
                             **sandbox_options(args))
    session = AgentSession(backend, repo, store, resume_id=resume, options=options)
    from agent.events import Shutdown, UserInput

    session.submit(UserInput(task))
    session.submit(Shutdown())
    stops = Interrupts(session)
    try:
        with stops:
            status = _consume(session, args.output_format)
        session.wait_closed(30)
    finally:
        backend.close()
    if stops.count:  # all is saved and flushed: skip the interpreter's slow teardown (~2 s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED if status == "interrupted" else exit_code(status)


EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


def exit_code(status: str) -> int:
    """A turn's status as the exit code: 0 done, 3 a limit (turns, the context window)."""
    limits = {"done": EXIT_OK, "turn_limit": EXIT_TURN_LIMIT, "context_full": EXIT_TURN_LIMIT,
              "interrupted": EXIT_INTERRUPTED}
    return limits.get(status, EXIT_ERROR)


class Interrupts:
    """SIGINT and SIGTERM while a run is going: the first stops the turn (the session keeps
    the partial answer and the tool results so far, then closes); a second SIGINT quits at
    once. Installed for the `with` block only (the main thread's handlers)."""

    def __init__(self, session):
        self.session = session
        self.count = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        # os.write, not sys.stderr: the main thread may be inside a write of its own.
        self.count += 1
        if self.count > 1:
            os.write(2, b"quit\n")
            os._exit(EXIT_INTERRUPTED)  # asked twice: no waiting for anything
        self.session.stop()
        name = signal.Signals(signum).name.lower()
        os.write(2, f"\n{name}: stopping the turn; the session keeps what it has (Ctrl-C "
                    "again to quit at once)\n".encode())


def _consume(session, fmt: str) -> str:
    from agent.cli.render import HeadlessRenderer

    renderer = HeadlessRenderer(session, fmt, out=out, out_json=out_json, err=err)
    return renderer.drain()
