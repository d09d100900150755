"""One way to describe and open an agent session, for `agent run` and `agent tui` alike.

Both commands register their session flags here and build their session here, so a flag added
for one is there for the other (they had drifted: the TUI lacked --allow, --deny, --tool-choice).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.common import (
    UsageError,
    add_model_flags,
    err,
    model_options,
    positive_int,
    resolve_dirs,
)
from cli.sandbox_flags import add_sandbox_flags, check_sandbox_flags, sandbox_options
from server import cli as serve

MODES = ["read-only", "ask", "accept-edits", "auto"]
TOOL_CHOICES = ["auto", "required", "first", "chain", "none"]
MODE_HELP = ("read-only: no edits or commands; ask: edits and commands need approval; "
             "accept-edits: edits run, commands need approval; auto: everything runs that no "
             "--deny rule stops")


def add_data_dir_flag(p: argparse.ArgumentParser, default: Any = None) -> None:
    p.add_argument("--data-dir", default=default,
                   help="the session store (default: AGENT_DATA_DIR, the config file, the "
                   "platform's data dir)")


def add_session_arguments(p: argparse.ArgumentParser, permission_mode: str) -> None:
    """The flags of a session: where, which model, what it may do, how it generates."""
    p.add_argument("--repo", default=".", help="repository root")
    add_model_flags(p)
    serve.add_server_flag(p)
    p.add_argument("--api-key-env", default=None, metavar="NAME",
                   help="with --model openai:...: the environment variable holding the API key "
                   "(default: OPENAI_API_KEY; none sent when it is unset)")
    add_data_dir_flag(p)
    p.add_argument("--permission-mode", choices=MODES, default=permission_mode, help=MODE_HELP)
    p.add_argument("--allow", action="append", default=[], metavar="RULE",
                   help="allow rule, e.g. 'shell(pytest *)' (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="RULE",
                   help="deny rule, e.g. 'shell(rm *)' (repeatable)")
    p.add_argument("--tool-choice", choices=TOOL_CHOICES, default=None,
                   help="auto: the model decides; required: every reply calls a tool; none: "
                   "text only; first: the first reply of a turn calls a tool and the next "
                   "answers; chain: explore, then edit for tasks that ask for a change, then "
                   "answer (default: auto, or chain for models whose template has no tools)")
    p.add_argument("--max-steps", type=positive_int, default=12, metavar="N",
                   help="model calls per turn; a turn that reaches it ends with "
                   "error_max_turns (exit 3)")
    p.add_argument("--max-tokens", type=positive_int, default=1024, help="tokens per model reply")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed, with --temperature (default: none, random)")
    add_sandbox_flags(p)
    p.add_argument("--resume", metavar="ID", help="continue the session with this id or prefix")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="continue the most recent session of this repository")


@dataclass(frozen=True)
class SessionPlan:
    """What the flags ask for, checked before anything heavy loads."""

    repo: Path
    options: Any  # agent.session.SessionOptions
    data_dir: Path
    cache_dir: Path


def plan_session(args: argparse.Namespace, *, task: str = "", replay_history: bool = False
                 ) -> SessionPlan:
    """Check the flags and build the session options; UsageError on a bad one, found before
    the agent's packages load (a usage error comes back in a tenth of a second)."""
    repo = Path(args.repo).resolve()
    if not repo.is_dir():
        raise UsageError(f"--repo {args.repo} is not a directory")
    if args.resume and args.cont:
        raise UsageError("give --resume ID or --continue, not both")
    check_sandbox_flags(args)
    from agent.backends.base import GenParams
    from agent.loop import LoopConfig
    from agent.session import SessionOptions

    gen = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    loop = LoopConfig(max_steps=args.max_steps, gen=gen, tool_choice=args.tool_choice)
    options = SessionOptions(permission_mode=args.permission_mode, allow=list(args.allow),
                             deny=list(args.deny), title=task[:80] or None, task=task,
                             loop=loop, replay_history=replay_history, **sandbox_options(args))
    dirs = resolve_dirs(args)
    return SessionPlan(repo, options, dirs.data_dir, dirs.cache_dir)


def open_store(data_dir: Path):
    from memory.store import SessionStore

    return SessionStore(data_dir)


def resolve_resume(store, args: argparse.Namespace, repo: Path) -> str | None:
    if args.resume:
        return store.get(args.resume).id
    if args.cont:
        latest = store.latest(str(repo))
        if latest is None:
            raise UsageError(f"no earlier session for {repo}; start one without --continue")
        return latest.id
    return None


def open_model(args: argparse.Namespace, plan: SessionPlan, report):
    """The backend the flags name: an OpenAI-compatible server or the local runtime, whose
    model is first downloaded if need be (`report`: a cli.download.DownloadReport)."""
    from agent.backends import open_backend
    from runtime import settings

    spec = settings.default_model(args.model)
    report.ensure(spec, plan.cache_dir)
    return open_backend(spec, **model_options(args), progress=report.tty,
                        cache_dir=plan.cache_dir, api_key_env=args.api_key_env,
                        server="off" if args.tensor_parallel > 1 else args.server)


def open_session(plan: SessionPlan, backend, store, resume_id: str | None):
    from agent.session import AgentSession

    return AgentSession(backend, plan.repo, store, resume_id=resume_id, options=plan.options)


def warn_if_not_git(repo: Path) -> None:
    """One line when the folder is not in a git repository: it runs, but cannot be rewound."""
    from agent.checkpoint import in_git_repository

    if not in_git_repository(repo):
        err(f"warning: {repo} is not in a git repository: no checkpoints, so `agent rewind` "
            "cannot restore its files (run `git init` there to have them)")
