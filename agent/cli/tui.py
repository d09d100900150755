"""`agent` / `agent tui`: the Textual app on a repository, over the same session machinery."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli.common import EXIT_OK, UsageError, add_model_flags, apply_dirs, model_options
from agent.cli.run import MODES, add_session_flags, open_store, resolve_resume
from agent.cli.sandbox_flags import add_sandbox_flags, sandbox_options
from server import cli as serve


def register(sub) -> None:
    p = sub.add_parser("tui", help="the interactive app (the default command)")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=".", help="repository root (default: .)")
    add_model_flags(p)
    serve.add_server_flag(p)
    add_session_flags(p)
    p.add_argument("--permission-mode", choices=MODES, default="ask")
    p.add_argument("--max-turns", type=int, default=12, help="model calls per message")
    p.add_argument("--max-tokens", type=int, default=1024, help="tokens per model reply")
    add_sandbox_flags(p)
    p.add_argument("--resume", metavar="ID", help="resume this session (id or prefix)")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="resume the most recent session of this repository")


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
    from agent.backends import open_backend
    from agent.backends.base import GenParams
    from agent.loop import LoopConfig
    from agent.session import AgentSession, SessionOptions
    from tui.app import AgentApp
    from tui.info import AppInfo

    repo = Path(args.repo).resolve()
    if not repo.is_dir():
        raise UsageError(f"--repo {args.repo} is not a directory")
    if not sys.stdout.isatty():
        raise UsageError("the TUI needs a terminal; use `agent run` for scripts")
    apply_dirs(args)
    store = open_store()
    resume = resolve_resume(store, args, repo)
    backend = open_backend(args.model, **model_options(args), server=args.server, progress=True)
    options = SessionOptions(permission_mode=args.permission_mode, replay_history=True,
                             loop=LoopConfig(max_steps=args.max_turns,
                                             gen=GenParams(max_tokens=args.max_tokens)),
                             **sandbox_options(args))
    session = AgentSession(backend, repo, store, resume_id=resume, options=options)
    app = AgentApp(session, StoreCatalog(store, backend, repo, options),
                   AppInfo(backend.name, str(repo), backend.context_window, resume or ""),
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
