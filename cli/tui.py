"""`agent` / `agent tui`: the Textual app on a repository, over the same session machinery."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import EXIT_OK, UsageError, err
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
    p = sub.add_parser("tui", help="the interactive app (the default command)",
                       description="The Textual app on a repository: a conversation with the "
                       "agent, its tool calls and diffs, approvals, /rewind. `agent` alone "
                       "opens it on the current folder.")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_session_arguments(p, permission_mode="ask")
    # Before --max-steps existed the TUI called model calls per message --max-turns.
    p.add_argument("--max-turns", type=int, dest="old_max_turns", default=None,
                   help=argparse.SUPPRESS)


class StoreCatalog:
    """The session picker's view of the store; opening a session starts an AgentSession."""

    def __init__(self, store, backend, repo: Path, options):
        self.store, self.backend, self.repo, self.options = store, backend, repo, options

    def list(self):
        from tui.catalog import SessionSummary

        return [SessionSummary(s.id, s.title or "(untitled)", s.repo_root, s.turn_count,
                               s.n_tokens, s.updated_at, f"{s.model}, {s.status}")
                for s in self.store.list_sessions(limit=200)]

    def delete(self, session_id: str) -> None:
        self.store.delete(session_id)

    def fork(self, session_id: str) -> str:
        return self.store.fork(session_id).id

    def open(self, session_id: str):
        from agent.session import AgentSession

        info = self.store.get(session_id)
        return AgentSession(self.backend, Path(info.repo_root), self.store, resume_id=info.id,
                            options=self.options)


def run(args: argparse.Namespace) -> int:
    from cli.download import DownloadReport
    from tui.app import AgentApp
    from tui.info import AppInfo

    if args.old_max_turns is not None:
        err("warning: in the TUI --max-turns is now --max-steps (model calls per message)")
        args.max_steps = args.old_max_turns
    plan = plan_session(args, replay_history=True)
    if not sys.stdout.isatty():
        raise UsageError("the TUI needs a terminal; use `agent run` for scripts")
    warn_if_not_git(plan.repo)
    store = open_store(plan.data_dir)
    resume = resolve_resume(store, args, plan.repo)
    backend = open_model(args, plan, DownloadReport(None, tty=True, err=err))
    session = open_session(plan, backend, store, resume)
    app = AgentApp(session, StoreCatalog(store, backend, plan.repo, plan.options),
                   AppInfo(backend.name, str(plan.repo), backend.context_window, resume or ""),
                   rewind=session.rewind, context_breakdown=session.context_breakdown)
    try:
        app.run()
    finally:
        _close(getattr(app, "handle", None) or session)
        backend.close()
    return EXIT_OK


def _close(handle) -> None:
    """The session in view when the app left (it may have switched): stopped and closed before
    the model goes away, so no turn is still running on it."""
    from agent.events import Interrupt, Shutdown

    if not handle.closed:
        handle.submit(Interrupt())
        handle.submit(Shutdown())
    if hasattr(handle, "wait_closed"):
        handle.wait_closed(10)
