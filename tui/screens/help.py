"""The keys and slash commands, on one screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.commands import COMMANDS

KEYS: tuple[tuple[str, str], ...] = (
    ("enter", "send the prompt (queued while the agent works)"),
    ("shift+enter, ctrl+j", "new line in the prompt"),
    ("up / down", "earlier prompts (on the first / last line)"),
    ("esc", "interrupt the running turn"),
    ("ctrl+o", "open or close all tool output"),
    ("ctrl+t", "diff layout: auto, unified, side by side"),
    ("ctrl+r", "sessions: resume, fork, delete"),
    ("f1, ?", "this help"),
    ("ctrl+q", "quit (the agent saves the session first)"),
)
APPROVAL_KEYS: tuple[tuple[str, str], ...] = (
    ("y", "allow once"),
    ("a", "always allow the rule shown (edit it first if you like)"),
    ("n, esc", "deny"),
)


class HelpScreen(ModalScreen[None]):
    """A modal listing every key and command; any of esc, q, f1 or ? closes it."""

    CSS_PATH = "help.tcss"

    BINDINGS = [Binding("escape,q,f1,question_mark", "close", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(_section("Keys", KEYS))
            yield Static(_section("When asked to approve a tool call", APPROVAL_KEYS))
            commands = [("/" + " /".join((c.name, *c.aliases)), c.help) for c in COMMANDS]
            yield Static(_section("Commands", commands))

    def action_close(self) -> None:
        self.dismiss(None)


def _section(title: str, rows: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> Content:
    width = max(len(key) for key, _ in rows)
    lines = [
        Content.assemble((f"  {key:<{width}}  ", "bold $text-accent"), text) for key, text in rows
    ]
    return Content("\n").join([Content.styled(title, "bold underline"), *lines])
