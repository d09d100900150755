"""Flags that shape how shell commands run, shared by `agent run` and `agent tui`.

`--pass-env NAME` adds a variable to the environment allowlist (PATH, HOME, LANG, ...; nothing
else of the agent's environment reaches a command), `--max-procs` and `--max-memory` change the
RLIMIT_NPROC / RLIMIT_AS defaults (`--max-memory 0`: no address-space limit).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from cli.cache import parse_size
from cli.common import UsageError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def add_sandbox_flags(p: argparse.ArgumentParser) -> None:
    """Register --pass-env, --max-procs and --max-memory on `p`."""
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable to commands (repeatable); others are "
                   "not passed, besides PATH, HOME, LANG, TERM and the like")
    p.add_argument("--max-procs", type=int, default=None, metavar="N",
                   help="process limit for commands (RLIMIT_NPROC; default 4096)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="address-space limit per command process, e.g. 32G (RLIMIT_AS; default "
                   "twice the physical memory; 0 for none)")


def check_sandbox_flags(args: argparse.Namespace) -> None:
    """UsageError on a bad variable name, process count or size (nothing heavy imported)."""
    for name in args.pass_env:
        if not _ENV_NAME.match(name):
            raise UsageError(f"--pass-env {name!r} is not a variable name (letters, digits, _)")
    if args.max_procs is not None and args.max_procs < 1:
        raise UsageError("--max-procs must be at least 1")
    if args.max_memory is not None:
        parse_size(args.max_memory)


def sandbox_options(args: argparse.Namespace) -> dict[str, Any]:
    """SessionOptions fields from the flags; UsageError on a bad name or size."""
    check_sandbox_flags(args)
    from agent.tools.processes import ProcessLimits  # the tools load only when a session runs

    memory = None if args.max_memory is None else parse_size(args.max_memory)
    limits = ProcessLimits(max_memory_bytes=memory)
    if args.max_procs is not None:
        limits = ProcessLimits(max_procs=args.max_procs, max_memory_bytes=memory)
    return {"pass_env": list(args.pass_env), "process_limits": limits}
