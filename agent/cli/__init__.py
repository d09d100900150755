"""The `agent` command: one parser, a module per subcommand.

Files:
- common.py: shared flags, output helpers, the error-to-exit-code policy.
- generate.py: `agent generate`, raw generation for scripts and benchmarks.
- models.py: `agent models list|pull`.
- run.py: `agent run`, a headless session.
- cache.py: `agent cache stats|gc|clear`.
- tui.py: `agent` / `agent tui`, the Textual app over an AgentSession and the store.
- sessions.py: `agent sessions list|show|delete|export`.
- sandbox_flags.py: --pass-env, --max-procs, --max-memory for how commands run.
- rewind.py: `agent rewind`, code and conversation back to a turn; `--undo`.
- render.py: headless output (text, json, stream-json).
`agent serve` lives in server/cli.py.
"""

from __future__ import annotations

import argparse
import sys

from agent.cli import cache, common, generate, models, rewind, run, sessions, tui
from server import cli as serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent",
        description="A coding agent that serves its own model and keeps the whole repository "
        "and conversation resident in its KV cache.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (tui, run, sessions, rewind, generate, models, cache, serve):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["tui", *argv]  # `agent` alone (or with only flags) opens the app
    args = parser.parse_args(argv)
    return common.run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
