"""Slash commands: the table the help screen lists, and the parser the prompt uses."""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMMAND = re.compile(r"^/([a-z][a-z0-9_-]*)(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class Command:
    """A slash command: its name, what it does, and other names it answers to."""

    name: str
    help: str
    aliases: tuple[str, ...] = ()


COMMANDS: tuple[Command, ...] = (
    Command("help", "keys and commands (also ? or F1)"),
    Command("model", "model, context window, repository, session"),
    Command("context", "what fills the context window, by segment"),
    Command("rewind", "go back to before an earlier turn"),
    Command("resume", "resume, fork or delete a saved session (also ctrl+r)", ("sessions",)),
    Command("diff", "cycle diffs: auto, unified, side by side (also ctrl+t)"),
    Command("quit", "shut the agent down and leave (also ctrl+q)", ("exit",)),
)

_BY_NAME = {name: c for c in COMMANDS for name in (c.name, *c.aliases)}


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: the command (None if unknown), the name typed, the rest."""

    command: Command | None
    typed: str
    arg: str = ""


def parse(text: str) -> Invocation | None:
    """The command in `text`, or None when it is a prompt for the model.

    Only `/word ...` is a command, so a prompt that starts with a path (`/tmp/x fails`) is not.
    A lone `?` asks for help.
    """
    stripped = text.strip()
    if stripped == "?":
        return Invocation(_BY_NAME["help"], "?")
    match = _COMMAND.match(stripped)
    if match is None:
        return None
    typed = match[1]
    return Invocation(_BY_NAME.get(typed), typed, (match[2] or "").strip())
