"""Permissions: which tool calls run at once, which need the user's approval, which are refused.

Modes: `read-only` (read-kind calls only), `ask` (edits and commands need approval),
`accept-edits` (edits run, commands need approval), `auto` (everything runs). Rules refine a mode:
`shell(git *)`, `shell(rm -rf *)`, `edit(src/**)`, `read(*.env)`, or a bare tool name for every
call of it. A rule's pattern is matched fnmatch-style (`*` also crosses `/`) against the call's
main argument: the command for shell, the path (relative to the root, symlinks followed) for file
tools, the subcommand for git. Deny rules win over allow rules and over every mode.

Rules for `read` hold for every tool that shows file contents (read, grep, the paths git
show/diff/log name, path arguments of shell commands, globs expanded) and for the repository
snapshot (`may_read`); rules for `edit` hold for write too.

Shell commands are parsed with a bash grammar (agent/shell_analysis.py). A deny rule matches the
whole command or any command it may run: each part of a chain, pipeline, `{ }` or subshell, each
substitution, and what wrappers run (`env`, `sudo`, `nice`, `timeout`, `xargs`, `sh -c`,
`eval`, `find -exec`, `find -delete` as `rm`, `/bin/rm` as `rm`). An allow rule vouches only for
one plain simple command: no chain, redirection, substitution, assignment or wrapper (a bare
`shell` rule allows every line that can be analysed; an exact rule such as `shell(bash -c ls)`,
as suggested, allows just that line). A line
that cannot be analysed (it does not parse, its command name is computed) asks in every mode but
`auto`. A script or interpreter can still hide a command, so shell deny rules are a guard
against mistakes, not a sandbox.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.shell_analysis import Analysis, analyse, command_text
from agent.tools import default_tools
from agent.tools.base import Tool

Mode = Literal["read-only", "ask", "accept-edits", "auto"]
MODES: tuple[Mode, ...] = ("read-only", "ask", "accept-edits", "auto")

_RULE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_CONTROL_TOKENS = {";", ";;", "&", "&&", "|", "||", "|&", "(", ")"}
_WRAPPERS = {"sudo", "env", "nohup", "time", "command", "exec", "nice", "builtin", "doas"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9][\w.:+-]*$")
# a rule for the key also holds for these tools: they read (or change) file contents too
_RULE_SCOPE = {"read": {"read", "grep"}, "edit": {"edit", "write"}}
# programs that run whatever their arguments say: suggest the exact command, never `python *`
_RUNS_ANYTHING = {
    "bash", "sh", "zsh", "dash", "ksh", "fish", "python", "python3", "node", "deno", "bun",
    "perl", "ruby", "php", "lua", "env", "sudo", "doas", "xargs", "eval", "exec", "nice",
    "nohup", "timeout", "time", "command", "builtin", "npx", "uvx", "pipx", "watch", "setsid",
    "stdbuf", "strace", "flock", "su", "ssh", "find", "busybox", "source", ".",
}
_GIT_READERS = ("show", "diff", "log")
_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_GLOB_MATCHES = 1000


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

    def covers(self, tool: str) -> bool:
        """Whether this rule is about `tool` (a `read` rule also covers grep, `edit` write)."""
        return tool == self.tool or tool in _RULE_SCOPE.get(self.tool, ())

    def matches(self, tool: str, subject: str) -> bool:
        """Whether this rule covers a call of `tool` whose main argument is `subject`."""
        if not self.covers(tool):
            return False
        return self.matches_subject(subject)

    def matches_subject(self, subject: str) -> bool:
        """Whether the pattern matches `subject` (a bare rule matches everything)."""
        if self.pattern is None or fnmatch.fnmatchcase(subject, self.pattern):
            return True
        # `git *` should also cover a bare `git`
        return self.pattern.endswith(" *") and subject == self.pattern[:-2]

    def __str__(self) -> str:
        return self.tool if self.pattern is None else f"{self.tool}({self.pattern})"


class Permissions:
    """The session's mode and rules; `check` decides each call. Rules may be added at runtime.

    `may_read` and `denied_read_patterns` let tools and the snapshot keep `read(...)` deny rules
    for files they read on their own (grep's files, git's pathspecs, the snapshot's files)."""

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

    def may_read(self, path: str | Path) -> bool:
        """Whether no `read` deny rule covers `path` (relative to the root, or absolute)."""
        subject = self._normalize_path(os.fspath(path))
        return not any(r.tool == "read" and r.matches_subject(subject) for r in self.deny_rules)

    def denied_read_patterns(self) -> list[str]:
        """The patterns of the `read` deny rules (`*` for a bare `read`)."""
        return [r.pattern or "*" for r in self.deny_rules if r.tool == "read"]

    def check(self, tool_name: str, args: Mapping[str, Any]) -> Decision:
        """Decide a call: deny rules, then the mode, then allow rules; otherwise ask."""
        tool = self._tools.get(tool_name)
        if tool is None:
            return Decision.deny(f"unknown tool {tool_name!r}")
        args = args if isinstance(args, Mapping) else {}  # malformed: the tool will refuse it
        kind = tool.kind_for(args)
        shell = analyse(self._subject(tool, args)) if tool.main_arg == "command" else None
        denied = self._denial(tool, args, shell)
        if denied:
            return Decision.deny(denied)
        if self.mode == "read-only" and kind != "read":
            return Decision.deny(f"{tool_name} is not allowed in read-only mode")
        if (
            kind == "read"
            or self.mode == "auto"
            or (self.mode == "accept-edits" and kind == "edit")
        ):
            return Decision.allow(f"{self.mode} mode")
        if self._allowed_by_rules(tool, args, shell):
            return Decision.allow("allowed by a rule")
        reason = f"{tool_name} needs approval in {self.mode} mode"
        if shell is not None and shell.opaque:
            reason += f": {shell.opaque}"
        return Decision.ask(reason, self.suggest_rule(tool_name, args))

    def suggest_rule(self, tool_name: str, args: Mapping[str, Any]) -> str | None:
        """A rule as narrow as this call, or None where no rule could allow it (compound
        commands): `git status` -> `shell(git status *)`, `bash -c ls` -> `shell(bash -c ls)`."""
        tool = self._tools.get(tool_name)
        if tool is None:
            return None
        subject = self._subject(tool, args)
        if tool.main_arg != "command":
            return str(Rule(tool_name, _escape(subject))) if tool.main_arg else tool_name
        shell = analyse(subject)
        if not shell.simple or shell.top is None:
            return None
        if shell.wrapper:
            return f"{tool_name}({_exact(shell.top)})"
        return f"{tool_name}({_narrow_pattern(shell.top)})"

    def _subject(self, tool: Tool, args: Mapping[str, Any]) -> str:
        """The main argument as rules see it (paths normalized)."""
        raw = tool.rule_subject(args)
        return self._normalize_path(raw) if tool.main_arg == "path" else raw

    def _normalize_path(self, value: str) -> str:
        # relative to the root with symlinks followed, so `./x`, `/abs/root/x` and a link to x
        # all meet the same rules
        if self._root is None:
            return os.path.normpath(value or ".")
        real = os.path.realpath(os.path.join(self._root, os.path.expanduser(value or ".")))
        inside = real == self._root or real.startswith(self._root + os.sep)
        return Path(os.path.relpath(real, self._root)).as_posix() if inside else real

    def _denial(self, tool: Tool, args: Mapping[str, Any], shell: Analysis | None) -> str | None:
        """Why a deny rule refuses this call, or None."""
        name = tool.name
        # as normalised, and as given (`Tool.rule_subject` does not trim git's subcommand)
        candidates = [self._subject(tool, args), Tool.rule_subject(tool, args)]
        if shell is not None:
            candidates += [command_text(c) for c in shell.commands]
            if shell.opaque:
                candidates += deny_candidates(candidates[0])
        for rule in self.deny_rules:
            if any(rule.matches(name, c) for c in candidates):
                return f"{name} is denied by the rule {rule}"
        for path in self._paths_read(tool, args, shell):
            if not self.may_read(path):
                return f"{name} would read {path}, which a read deny rule covers"
        return None

    def _paths_read(self, tool: Tool, args: Mapping[str, Any], shell: Analysis | None
                    ) -> list[str]:
        """Paths whose contents the call shows besides its main argument."""
        if shell is not None:
            words = [w for c in shell.commands for w in c[1:] if _looks_like_path(w)]
            return [p for w in words for p in self._expanded(w)]
        if tool.name == "git" and tool.rule_subject(args) in _GIT_READERS:
            raw = args.get("args")
            return git_paths(raw) if isinstance(raw, list) else []
        return []

    def _expanded(self, word: str) -> list[str]:
        """`word`, and the files it names as a glob (`cat .e*`), as bash would expand it."""
        if self._root is None or not _GLOB_CHARS.search(word):
            return [word]
        hidden = {"include_hidden": True} if sys.version_info >= (3, 11) else {}
        try:
            matches = glob.glob(os.path.expanduser(word), root_dir=self._root, recursive=True,
                                **hidden)
        except (OSError, ValueError, re.error):
            return [word]
        return [word, *matches[:_MAX_GLOB_MATCHES]]

    def _allowed_by_rules(self, tool: Tool, args: Mapping[str, Any], shell: Analysis | None
                          ) -> bool:
        if shell is None:
            subject = self._subject(tool, args)
            return any(r.matches(tool.name, subject) for r in self.allow_rules)
        if shell.opaque is None and any(r.covers(tool.name) and r.pattern is None
                                        for r in self.allow_rules):
            return True  # a bare `shell` rule: every line that can be read
        if not shell.simple or shell.top is None:
            return False
        exact = _exact(shell.top)
        if any(r.covers(tool.name) and r.pattern == exact for r in self.allow_rules):
            return True  # the user approved exactly this command, wrapper and all
        text = command_text(shell.top)
        return not shell.wrapper and any(r.matches(tool.name, text) for r in self.allow_rules)


def git_paths(args: list[Any]) -> list[str]:
    """The file paths git arguments name: `rev:path` objects and plain path arguments."""
    paths = []
    for arg in (a for a in args if isinstance(a, str)):
        if arg.startswith("-"):
            continue
        rev, colon, path = arg.partition(":")
        paths.append(path.removeprefix("./") if colon else arg)
    return [p for p in paths if p]


def _looks_like_path(word: str) -> bool:
    return bool(word) and not word.startswith("-") and "\0" not in word


def _narrow_pattern(words: tuple[str, ...]) -> str:
    """The narrowest useful pattern for one simple command (see `suggest_rule`)."""
    name = os.path.basename(words[0])
    if name in _RUNS_ANYTHING or name.startswith("python"):
        if len(words) >= 3 and words[1] == "-m" and _PLAIN_WORD.match(words[2]):
            return f"{_escape_words(words[:3])} *"  # python -m pytest: that module only
        if len(words) >= 2 and not words[1].startswith("-"):
            return f"{_escape_words(words[:2])} *"  # python script.py: that script only
        return _exact(words)
    if name != words[0]:
        return _exact(words)  # ./tool or /usr/bin/tool: that exact command
    keep = words[:2] if len(words) > 1 and _PLAIN_WORD.match(words[1]) else words[:1]
    return f"{_escape_words(keep)} *"


def _exact(words: tuple[str, ...]) -> str:
    """A pattern that matches only this command, quoted as a shell would."""
    return _escape(shlex.join(words))


def _escape_words(words: tuple[str, ...]) -> str:
    return " ".join(_escape(w) for w in words)


def _escape(text: str) -> str:
    """`text` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def split_command(command: str) -> list[str] | None:
    """The simple commands of a shell line split at control operators (a rough fallback for
    lines the grammar cannot parse), or None if it does not lex (unbalanced quotes)."""
    text = command.replace("\\\n", " ").replace("\n", " ; ").replace("`", " ; ")
    text = text.replace("$(", " ; ").replace("<(", " ; ").replace(">(", " ; ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    parts, current = [], []
    for token in [*tokens, ";"]:
        if token in _CONTROL_TOKENS or token in ("{", "}"):
            if current:
                parts.append(" ".join(current))
            current = []
        else:
            current.append(token)
    return parts


def deny_candidates(command: str) -> list[str]:
    """Every rough part of `command` (for lines that do not parse), as written and without
    leading assignments, wrappers and directories."""
    parts = split_command(command) or command.split()
    return parts + [_unwrapped(p) for p in parts]


def _unwrapped(part: str) -> str:
    words = part.split(" ")
    while words and (_ASSIGNMENT.match(words[0]) or os.path.basename(words[0]) in _WRAPPERS
                     or words[0].startswith("-")):
        words.pop(0)
    if words:
        words[0] = os.path.basename(words[0])
    return " ".join(words)
