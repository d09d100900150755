"""`agent rewind ID TURN` and `agent rewind ID --undo`: code and conversation back to a turn.

Before anything is restored the worktree is saved as the session's undo point, so a rewind
loses no work: `--undo` puts the files back as they were (it does not bring back the dropped
conversation). Only paths under the session's repository folder (or a narrower `--repo`) are
touched: rewinding a session of `mono/pkgA` leaves `mono/pkgB` alone.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.common import EXIT_OK, UsageError, out, resolve_dirs
from cli.session_factory import add_data_dir_flag, open_store


def register(sub) -> None:
    rw = sub.add_parser("rewind", help="restore code and conversation to an earlier turn",
                        description="Put the worktree back as it was when TURN started and drop "
                        "the conversation from that turn on; the next run continues from there. "
                        "The files as they were before are kept: --undo brings them back.")
    add_data_dir_flag(rw)
    rw.add_argument("id", help="session id or a unique prefix")
    rw.add_argument("turn", type=int, nargs="?", help="the turn to return to (its start)")
    rw.add_argument("--code-only", action="store_true", help="restore files, keep the conversation")
    rw.add_argument("--undo", action="store_true",
                    help="put the files back as they were before the last rewind")
    rw.add_argument("--repo", default=None,
                    help="restore only under this folder, inside the session's repository "
                    "(default: all of it)")
    rw.set_defaults(func=run_rewind)


def run_rewind(args: argparse.Namespace) -> int:
    from agent.checkpoint import Checkpoints

    if args.undo == (args.turn is not None):
        raise UsageError("give a TURN to rewind to, or --undo (not both)")
    store = open_store(resolve_dirs(args).data_dir)
    info = store.get(args.id)
    checkpoints = Checkpoints(_scope(args.repo, info.repo_root), info.id)
    if args.undo:
        changed = checkpoints.undo()
        out(f"undid the last rewind of {info.id}: {_count(changed)} restored "
            "(the conversation stays where the rewind left it)")
        return EXIT_OK
    marks = {c.turn for c in store.checkpoints(info.id)}
    if args.turn not in marks:
        known = ", ".join(str(t) for t in sorted(marks)) or "none"
        raise UsageError(f"session {info.id} has no checkpoint for turn {args.turn} "
                         f"(turns with checkpoints: {known})")
    changed = checkpoints.restore(args.turn)
    if not args.code_only:
        store.truncate_to_turn(info.id, args.turn - 1)
    out(f"rewound {info.id} to the start of turn {args.turn}: {_count(changed)} restored; "
        f"undo with: agent rewind {info.id} --undo")
    return EXIT_OK


def _scope(repo: str | None, session_root: str) -> str:
    """The folder to restore: the session's, or a folder inside it."""
    if repo is None:
        return session_root
    real, root = os.path.realpath(repo), os.path.realpath(session_root)
    if real != root and not real.startswith(root + os.sep):
        raise UsageError(f"--repo {repo} is not inside the session's repository {session_root}")
    if not Path(real).is_dir():
        raise UsageError(f"--repo {repo} is not a directory")
    return real


def _count(paths: list[str]) -> str:
    return f"{len(paths)} file{'s' if len(paths) != 1 else ''}"
