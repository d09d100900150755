"""`agent run`: a headless agent session on a repository, for people and for scripts."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TURN_LIMIT,
    UsageError,
    err,
    out,
    out_json,
    positive_int,
)
from cli.session_factory import (
    add_session_arguments,
    open_model,
    open_session,
    open_store,
    plan_session,
    resolve_resume,
    warn_if_not_git,
)


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the agent on a task without the TUI",
        description="Run tasks headless, each a turn of one session. Tool calls that would "
        "need approval are denied (there is nobody to ask): widen with --permission-mode auto "
        "or --allow RULE. Exit codes: 0 done, 1 error, 2 usage, 3 a limit (--max-steps, "
        "--max-turns, the context window), 130 interrupted.",
    )
    p.add_argument("task", nargs="*",
                   help="what to do ('-': read it from stdin); several tasks run as turns of "
                   "one session, in order, while each ends done")
    add_session_arguments(p, permission_mode="accept-edits")
    p.add_argument("--max-turns", type=positive_int, default=None, metavar="N",
                   help="turns (tasks) this run may take (default: all the tasks given)")
    p.add_argument("--output-format", choices=["text", "json", "stream-json"], default="text",
                   help="text: the answer on stdout, tool calls on stderr; json: one object, "
                   "the result and the whole transcript; stream-json: one event per line "
                   "(docs/events.md)")
    p.set_defaults(func=run)


def read_tasks(args: argparse.Namespace) -> list[str]:
    """The tasks, `-` read from stdin; UsageError when there is none."""
    tasks = [sys.stdin.read() if t == "-" else t for t in args.task]
    tasks = [t for t in tasks if t.strip()]
    if not tasks:
        raise UsageError("give a task: agent run --repo . \"fix the failing test\"")
    return tasks


def run(args: argparse.Namespace) -> int:
    tasks = read_tasks(args)
    plan = plan_session(args, task=tasks[0])
    warn_if_not_git(plan.repo)
    store = open_store(plan.data_dir)
    resume = resolve_resume(store, args, plan.repo)
    renderer = _renderer(args, tasks)
    backend = open_model(args, plan, _progress(args.output_format, renderer))
    session = open_session(plan, backend, store, resume)
    renderer.session = session
    stops = Interrupts(session)
    try:
        with stops:
            status = _drain(renderer, session)
        session.wait_closed(30)
    finally:
        backend.close()
    if stops.count:  # all is saved and flushed: skip the interpreter's slow teardown (~2 s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    return exit_code(status)


def _renderer(args: argparse.Namespace, tasks: list[str]):
    from cli.render import HeadlessRenderer

    return HeadlessRenderer(None, args.output_format, out=out, out_json=out_json, err=err,
                            tasks=tasks, max_turns=args.max_turns)


def _progress(fmt: str, renderer):
    """How the model download reports: a bar on a terminal, events in stream-json, else a
    line when it starts and when it ends (see cli/download.py)."""
    from cli.download import DownloadReport

    return DownloadReport(renderer.emit_progress if fmt == "stream-json" else None,
                          tty=sys.stderr.isatty(), err=err)


def _drain(renderer, session) -> str:
    """Render until the session closes. A reader that went away (`| head`) stops the turn;
    the session saves what it has, and the BrokenPipeError goes on up (exit 0, quietly)."""
    try:
        return renderer.drain()
    except BrokenPipeError:
        session.stop()
        session.wait_closed(30)
        raise


def exit_code(status: str) -> int:
    """A run's status as the exit code: 0 done, 3 a limit (steps, turns, the context window)."""
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
