"""Permissions: which tool calls run at once, which need the user's approval, which are refused.

Modes: `read-only` (read-kind calls only), `ask` (edits and commands need approval),
`accept-edits` (edits run, commands need approval), `auto` (everything runs). Rules refine a mode:
`shell(git *)`, `shell(rm -rf *)`, `edit(src/**)`, `read(*.env)`, or a bare tool name for every
call of it. A rule's pattern is matched fnmatch-style (`*` also crosses `/`) against the call's
main argument: the command for shell, the path (relative to the root, symlinks followed) for file
tools, the subcommand for git. Deny rules win over allow rules and over every mode.

Shell commands are split at `;`, `&&`, `||`, `|`, `&`, newlines and subshells: a deny rule matches
if it matches the whole command or any part (also with leading `VAR=x`, `sudo`, `env`, ... taken
off); an allow rule vouches for a command only if it matches every part and there is no command
substitution. This is best effort: `bash -c '...'`, `eval` or a script can still hide a command,
so deny rules on shell are a guard against mistakes, not a sandbox.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.tools import default_tools
from agent.tools.base import Tool

Mode = Literal["read-only", "ask", "accept-edits", "auto"]
MODES: tuple[Mode, ...] = ("read-only", "ask", "accept-edits", "auto")

_RULE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_CONTROL_TOKENS = {";", ";;", "&", "&&", "|", "||", "|&", "(", ")"}
_WRAPPERS = {"sudo", "env", "nohup", "time", "command", "exec", "nice", "builtin", "doas"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9][\w.:+-]*$")


@dataclass(frozen=True)
class Decision:
    """The verdict on one call: `allow`, `deny` (with the reason, for the model) or `ask` (with a
    rule the user may choose to always allow)."""

    action: Literal["allow", "deny", "ask"]
    reason: str = ""
    suggested_rule: str | None = None

    @classmethod
    def allow(cls, reason: str = "") -> Decision:
        return cls("allow", reason)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls("deny", reason)

    @classmethod
    def ask(cls, reason: str, suggested_rule: str | None = None) -> Decision:
        return cls("ask", reason, suggested_rule)


@dataclass(frozen=True)
class Rule:
    """`tool(pattern)`, or a bare `tool` (pattern None) that matches every call of it."""

    tool: str
    pattern: str | None = None

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse `shell(git *)`; raises ValueError with the expected form."""
        m = _RULE.match(text)
        if not m:
            raise ValueError(
                f"bad permission rule {text!r}; expected tool or tool(pattern), "
                "e.g. shell(git *) or edit(src/**)"
            )
        return cls(m.group(1), m.group(2).strip() if m.group(2) is not None else None)

    def matches(self, tool: str, subject: str) -> bool:
        """Whether this rule covers a call of `tool` whose main argument is `subject`."""
        if tool != self.tool:
            return False
        if self.pattern is None or fnmatch.fnmatchcase(subject, self.pattern):
            return True
        # `git *` should also cover a bare `git`
        return self.pattern.endswith(" *") and subject == self.pattern[:-2]

    def __str__(self) -> str:
        return self.tool if self.pattern is None else f"{self.tool}({self.pattern})"


class Permissions:
    """The session's mode and rules; `check` decides each call. Rules may be added at runtime."""

    def __init__(
        self,
        mode: Mode = "ask",
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        tools: Iterable[Tool] | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.mode = mode
        self.allow_rules = [Rule.parse(r) for r in allow]
        self.deny_rules = [Rule.parse(r) for r in deny]
        self._tools = {t.name: t for t in (default_tools() if tools is None else tools)}
        self._root = os.path.realpath(root) if root is not None else None

    @property
    def mode(self) -> Mode:
        """The current mode; assigning an unknown one raises ValueError."""
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown permission mode {mode!r}; use one of {', '.join(MODES)}")
        self._mode = mode

    def add_rule(self, rule: str, *, deny: bool = False) -> Rule:
        """Add an allow (or deny) rule, e.g. after the user chose "always allow"."""
        parsed = Rule.parse(rule)
        (self.deny_rules if deny else self.allow_rules).append(parsed)
        return parsed

    def check(self, tool_name: str, args: Mapping[str, Any]) -> Decision:
        """Decide a call: deny rules, then the mode, then allow rules; otherwise ask."""
        tool = self._tools.get(tool_name)
        if tool is None:
            return Decision.deny(f"unknown tool {tool_name!r}")
        args = args if isinstance(args, Mapping) else {}  # malformed: the tool will refuse it
        kind = tool.kind_for(args)
        subject = self._subject(tool, args)
        denied = self._deny_match(tool_name, args)
        if denied:
            return Decision.deny(f"{tool_name} is denied by the rule {denied}")
        if self.mode == "read-only" and kind != "read":
            return Decision.deny(f"{tool_name} is not allowed in read-only mode")
        if (
            kind == "read"
            or self.mode == "auto"
            or (self.mode == "accept-edits" and kind == "edit")
        ):
            return Decision.allow(f"{self.mode} mode")
        if self._allowed_by_rules(tool_name, subject):
            return Decision.allow("allowed by a rule")
        return Decision.ask(
            f"{tool_name} needs approval in {self.mode} mode", self.suggest_rule(tool_name, args)
        )

    def suggest_rule(self, tool_name: str, args: Mapping[str, Any]) -> str | None:
        """A rule that would allow this call and others like it, or None (compound commands)."""
        tool = self._tools.get(tool_name)
        if tool is None:
            return None
        subject = self._subject(tool, args)
        if tool.main_arg != "command":
            return str(Rule(tool_name, subject)) if tool.main_arg else tool_name
        parts = split_command(subject)
        if parts is None or len(parts) != 1:
            return None
        words = parts[0].split()
        keep = words[:2] if len(words) > 1 and _PLAIN_WORD.match(words[1]) else words[:1]
        return f"{tool_name}({' '.join(keep)} *)" if words else None

    def _subject(self, tool: Tool, args: Mapping[str, Any]) -> str:
        """The main argument as rules see it (paths normalized)."""
        raw = _raw_subject(tool, args)
        return self._normalize_path(raw) if tool.main_arg == "path" else raw

    def _normalize_path(self, value: str) -> str:
        # relative to the root with symlinks followed, so `./x`, `/abs/root/x` and a link to x
        # all meet the same rules
        if self._root is None:
            return os.path.normpath(value or ".")
        real = os.path.realpath(os.path.join(self._root, os.path.expanduser(value or ".")))
        inside = real == self._root or real.startswith(self._root + os.sep)
        return Path(os.path.relpath(real, self._root)).as_posix() if inside else real

    def _deny_match(self, tool_name: str, args: Mapping[str, Any]) -> Rule | None:
        tool = self._tools[tool_name]
        raw, subject = _raw_subject(tool, args), self._subject(tool, args)
        candidates = [subject, raw]
        if tool.main_arg == "command":
            candidates += deny_candidates(subject)
        for rule in self.deny_rules:
            if any(rule.matches(tool_name, c) for c in candidates):
                return rule
        return None

    def _allowed_by_rules(self, tool_name: str, subject: str) -> bool:
        parts: list[str] | None = [subject]
        if self._tools[tool_name].main_arg == "command":
            parts = None if "$(" in subject or "`" in subject else split_command(subject)
        if not parts:
            return False
        return all(any(r.matches(tool_name, p) for r in self.allow_rules) for p in parts)


def _raw_subject(tool: Tool, args: Mapping[str, Any]) -> str:
    if tool.main_arg is None:
        return ""
    value = args.get(tool.main_arg)
    if value is None and tool.main_arg == "path":
        value = args.get("file_path")  # the alias file tools accept
    return "" if value is None else str(value)


def split_command(command: str) -> list[str] | None:
    """The simple commands of a shell line (split at control operators), or None if it does not
    parse (unbalanced quotes)."""
    text = command.replace("\\\n", " ").replace("\n", " ; ").replace("`", " ; ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    parts, current = [], []
    for token in [*tokens, ";"]:
        if token in _CONTROL_TOKENS:
            if current:
                parts.append(" ".join(current))
            current = []
        else:
            current.append(token)
    return parts


def deny_candidates(command: str) -> list[str]:
    """Every part of `command`, as written and without leading assignments and wrappers."""
    parts = split_command(command) or [command]
    return parts + [_unwrapped(p) for p in parts]


def _unwrapped(part: str) -> str:
    words = part.split(" ")
    while words and (_ASSIGNMENT.match(words[0]) or words[0] in _WRAPPERS):
        words.pop(0)
    return " ".join(words)
