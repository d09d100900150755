"""The `agent` command: the composition root above `tui/`, `agent/`, `runtime/` and `memory/`.

One parser, a module per subcommand. Settings are resolved here once and handed down as
arguments; nothing below imports this package.

Files:
- common.py: the parser class (defaults in --help, one-line usage errors), shared flags,
  the directories resolved once, output helpers, the error-to-exit-code policy.
- generate.py: `agent generate`, raw generation for scripts and benchmarks.
- models.py: `agent models list|pull`.
- run.py: `agent run`, a headless session: tasks as turns, --max-turns, the output formats.
- session_factory.py: the session flags and the one way `run` and `tui` build a session.
- download.py: the model download, reported on a terminal, in stream-json, or in two lines.
- cache.py: `agent cache stats|gc|clear`.
- tui.py: `agent` / `agent tui`, the Textual app over an AgentSession and the store.
- sessions.py: `agent sessions list|show|delete|export|import`.
- sandbox_flags.py: --pass-env, --max-procs, --max-memory for how commands run.
- rewind.py: `agent rewind`, code and conversation back to a turn; `--undo`.
- render.py: headless output (text, json, stream-json; see docs/events.md).
"""

from __future__ import annotations

import argparse
import sys

from cli import cache, common, generate, models, rewind, run, sessions, tui
from server import cli as serve

GLOBAL_FLAGS = ("--debug",)  # accepted anywhere on the line


def build_parser() -> argparse.ArgumentParser:
    parser = common.Parser(
        prog="agent",
        description="A coding agent that serves its own model and keeps the whole repository "
        "and conversation resident in its KV cache. `agent` alone opens the app.",
        epilog="Exit codes: 0 done, 1 error, 2 usage, 3 a limit, 130 interrupted.",
    )
    common.add_debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (tui, run, sessions, rewind, generate, models, cache, serve):
        module.register(sub)
    for p in _all_parsers(parser)[1:]:
        common.add_debug_flag(p)
    return parser


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _all_parsers(child)
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    lead = [a for a in argv[:_first_other(argv)]]
    rest = argv[len(lead):]
    if not rest or rest[0].startswith("-") and rest[0] not in ("-h", "--help"):
        rest = ["tui", *rest]  # `agent` alone (or with only flags) opens the app
    args = parser.parse_args([*lead, *rest])
    return common.run_command(args.func, args)


def _first_other(argv: list[str]) -> int:
    """Index of the first argument that is not a global flag."""
    return next((i for i, a in enumerate(argv) if a not in GLOBAL_FLAGS), len(argv))


if __name__ == "__main__":
    sys.exit(main())
