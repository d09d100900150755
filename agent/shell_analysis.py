"""What a shell command line will run, read with a real bash grammar (bashlex), for permissions.

`analyse(command)` walks the parse tree and returns every command the line may start: each simple
command of a list, pipeline, compound (`{ }`, `( )`, if, for, while, function bodies) and command
or process substitution, and the command inside each wrapper (`env`, `sudo`, `nice`, `timeout`,
`xargs`, `sh -c`, `eval`, `find -exec`, `git -c alias.x=!...`, ...), with `find -delete` seen as
an `rm`. `top` is the line's first
command as written; `simple` says whether the line is that one command and nothing else: no
chain, redirection (other than to /dev/null or another descriptor), substitution, assignment or
computed word; `wrapper` whether it runs further commands itself (`sudo make`, `git -c ...`).
`opaque` says why part of the line cannot be seen (it does not parse, a command name is computed
at run time, a nesting is too deep); callers ask the user about such lines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import bashlex
import bashlex.errors

MAX_NESTING = 8
_STRUCTURE = {"list", "pipeline", "compound", "if", "for", "while", "until", "function"}
_IGNORED = {"reservedword", "operator", "pipe", "heredoc"}
# What bash takes as a tilde-prefix's login name (`~`, `~user`, `~+`, `~-`, `~2`); bashlex's
# tilde node also swallows what follows up to a slash, substitutions included (`~$(cmd)`).
_TILDE_PREFIX = re.compile(r"~[A-Za-z0-9._+-]*")
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox-sh", "fish"}
_HARMLESS_TARGETS = {"/dev/null"}
# options (of the wrapper named) that take the next word as their value
_OPTION_ARGS = {
    "env": {"-u", "--unset", "-C", "--chdir", "-S", "--split-string"},
    "sudo": {"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "--user", "--group"},
    "doas": {"-u", "-C"},
    "nice": {"-n", "--adjustment"},
    "ionice": {"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"},
    "timeout": {"-k", "-s", "--kill-after", "--signal"},
    "exec": {"-a"},
    "stdbuf": {"-i", "-o", "-e", "--input", "--output", "--error"},
    "xargs": {"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter",
              "--max-args", "--max-procs", "--max-chars", "--replace", "--max-lines"},
    "flock": {"-w", "--timeout", "-E", "--conflict-exit-code"},
    "watch": {"-n", "--interval", "-d"},
    "strace": {"-o", "-e", "-p", "-s", "-u", "-E"},
    "taskset": set(),
    "setsid": set(),
    "nohup": set(),
    "time": {"-f", "-o", "--format", "--output"},
    "command": set(),
    "builtin": set(),
    "unbuffer": set(),
    "chrt": set(),
    "caffeinate": set(),
    "busybox": set(),
}
# positional words a wrapper takes before the command: `timeout 5 rm`, `flock file rm`
_POSITIONALS = {"timeout": 1, "flock": 1, "taskset": 1, "chrt": 1}
_GIT_CODE_OPTIONS = ("-c", "--config-env", "--exec-path", "--upload-pack", "--receive-pack")
_FIND_EXEC = {"-exec", "-execdir", "-ok", "-okdir"}
_FIND_WRITES = {"-fprint", "-fprint0", "-fprintf", "-fls"}
_DYNAMIC_NAME = re.compile(r"[*?\[{}$`~,]")
_TIME_KEYWORD = re.compile(r"^\s*time(\s+-p)?\s+(?=\S)")


@dataclass
class Analysis:
    """What `analyse` found; `commands` hold literal words (quotes removed), wrappers included
    as their own entry and again without the wrapper."""

    commands: list[tuple[str, ...]] = field(default_factory=list)
    top: tuple[str, ...] | None = None
    simple: bool = True
    wrapper: bool = False
    opaque: str | None = None

    def hide(self, why: str) -> None:
        """Part of the line cannot be analysed: `why` is told to the user."""
        self.simple = False
        self.opaque = self.opaque or why


def analyse(command: str) -> Analysis:
    """Parse `command` and collect what it runs (see the module docstring)."""
    result = Analysis()
    _analyse_text(command, result, depth=0)
    if not result.commands and result.opaque is None:
        result.simple = False  # an empty line or bare assignments: nothing an allow rule names
    return result


def command_text(words: tuple[str, ...]) -> str:
    """The words as rules see them, joined by single spaces."""
    return " ".join(words)


def _analyse_text(text: str, result: Analysis, depth: int) -> None:
    if depth > MAX_NESTING:
        result.hide(f"commands nested more than {MAX_NESTING} deep")
        return
    if not text.strip():
        return
    timed = _TIME_KEYWORD.match(text)
    if timed:  # bashlex does not know the `time` keyword: read what it times
        result.wrapper = True
        text = text[timed.end() :]
    try:
        nodes = bashlex.parse(text)
    except (bashlex.errors.ParsingError, NotImplementedError) as e:
        result.hide(f"the command does not parse as plain bash ({_first_line(e)})")
        return
    except (RecursionError, Exception) as e:  # noqa: BLE001 - bashlex fails in many ways
        result.hide(f"the command cannot be parsed ({type(e).__name__})")
        return
    if len(nodes) > 1:
        result.simple = False  # several lines
    for node in nodes:
        _visit(node, result, depth)


def _visit(node: Any, result: Analysis, depth: int) -> None:
    kind = node.kind
    if kind in _STRUCTURE:
        result.simple = False
        for part in getattr(node, "parts", None) or getattr(node, "list", []):
            _visit(part, result, depth)
    elif kind == "command":
        _visit_command(node, result, depth)
    elif kind in ("commandsubstitution", "processsubstitution"):
        result.simple = False
        _visit(node.command, result, depth + 1)
    elif kind in ("word", "assignment", "parameter"):
        _visit_word_parts(node, result, depth)
    elif kind == "tilde":
        hidden = _tilde_rest(node)
        if hidden:  # `~`cmd``: bash runs cmd; read the rest as the word it is
            result.simple = False
            _analyse_text(": " + hidden, result, depth + 1)
    elif kind == "redirect":
        _visit_redirect(node, result, depth)
    elif kind not in _IGNORED:
        result.hide(f"unsupported shell construct {kind!r}")


def _tilde_rest(node: Any) -> str:
    """What a tilde node holds beyond its login-name prefix ("" for `~`, `~user`, `~+`)."""
    value = getattr(node, "value", "") or ""
    prefix = _TILDE_PREFIX.match(value)
    return value[prefix.end():] if prefix else value


def _visit_word_parts(node: Any, result: Analysis, depth: int) -> None:
    for part in getattr(node, "parts", []):
        _visit(part, result, depth)


def _visit_redirect(node: Any, result: Analysis, depth: int) -> None:
    target = node.output
    if isinstance(target, int) or node.type in (">&", "<&") and _is_fd(target):
        return  # 2>&1: one descriptor onto another, no file
    if getattr(target, "word", None) not in _HARMLESS_TARGETS:
        result.simple = False
    if target is not None and not isinstance(target, int):
        _visit_word_parts(target, result, depth)


def _is_fd(target: Any) -> bool:
    return isinstance(target, int) or getattr(target, "word", "").isdigit()


def _visit_command(node: Any, result: Analysis, depth: int) -> None:
    words: list[str] = []
    dynamic: list[bool] = []
    for part in node.parts:
        if part.kind == "assignment":
            result.simple = False  # `GIT_DIR=x git ...` changes what the command does
            _visit_word_parts(part, result, depth)
        elif part.kind == "word":
            words.append(part.word)
            dynamic.append(any(p.kind != "tilde" or _tilde_rest(p)
                               for p in getattr(part, "parts", [])))
            _visit_word_parts(part, result, depth)
        else:
            _visit(part, result, depth)
    if not words:
        return
    if dynamic[0] or _DYNAMIC_NAME.search(words[0]):
        result.hide(f"the command name {words[0]!r} is only known when it runs")
    elif any(dynamic):
        result.simple = False
    if result.top is None and depth == 0:
        result.top = tuple(words)
    elif depth == 0:
        result.simple = False
    _add_command(tuple(words), result, depth)


def _add_command(words: tuple[str, ...], result: Analysis, depth: int) -> None:
    """Record `words` and whatever they run in turn."""
    result.commands.append(words)
    name = os.path.basename(words[0])
    if name != words[0]:
        result.commands.append((name, *words[1:]))
    if depth > MAX_NESTING:
        result.hide(f"commands nested more than {MAX_NESTING} deep")
        return
    for inner in _inner(name, words, result):
        result.wrapper = True
        if isinstance(inner, str):
            _analyse_text(inner, result, depth + 1)
        elif inner:
            _add_command(inner, result, depth + 1)


def _inner(name: str, words: tuple[str, ...], result: Analysis) -> list[str | tuple[str, ...]]:
    """What the command `words` (named `name`) runs itself: word lists, or text to parse."""
    args = words[1:]
    if name in _SHELLS:
        return _shell_script(args)
    if name == "eval":
        return [" ".join(args)]
    if name == "alias":
        return [a.split("=", 1)[1] for a in args if "=" in a]
    if name == "find":
        return _find_commands(args, result)
    if name == "git":
        return _git_hidden(args, result)
    if name == "watch":
        return [" ".join(_after_options(name, args))]
    if name in ("su", "script", "runuser"):
        return _option_value(args, ("-c", "--command"))
    if name == "flock" and len(args) >= 2 and args[1] in ("-c", "--command"):
        return list(args[2:3])
    if name in _OPTION_ARGS:
        rest = _after_options(name, args)
        if name == "env":
            rest = _env_rest(args, rest)
        return [tuple(rest)] if rest else []
    return []


def _after_options(name: str, args: tuple[str, ...]) -> list[str]:
    """The words after a wrapper's options (and its leading positional words)."""
    takes_value, i = _OPTION_ARGS.get(name, set()), 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if name == "env" and "=" in arg and not arg.startswith("-"):
            i += 1  # env's NAME=value words
            continue
        if not arg.startswith("-") or arg == "-":
            break
        i += 2 if arg in takes_value else 1
    return list(args[i + _POSITIONALS.get(name, 0) :])


def _env_rest(args: tuple[str, ...], rest: list[str]) -> list[str | Any]:
    # env -S 'rm x' splits its argument into the command
    for i, arg in enumerate(args[:-1]):
        if arg in ("-S", "--split-string"):
            return [*args[i + 1].split(), *rest]
    return rest


def _shell_script(args: tuple[str, ...]) -> list[str | tuple[str, ...]]:
    for i, arg in enumerate(args):
        if arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]:
            return list(args[i + 1 : i + 2])
        if not arg.startswith(("-", "+")):
            return []  # a script file: what it runs is its own business
    return []


def _option_value(args: tuple[str, ...], names: tuple[str, ...]) -> list[str | tuple[str, ...]]:
    found: list[str | tuple[str, ...]] = []
    for i, arg in enumerate(args[:-1]):
        if arg in names:
            found.append(args[i + 1])
    return found


def _find_commands(args: tuple[str, ...], result: Analysis) -> list[str | tuple[str, ...]]:
    found: list[str | tuple[str, ...]] = []
    starts = tuple(a for a in args if not a.startswith(("-", "(", "!", ")")))[:1]
    i = 0
    while i < len(args):
        if args[i] in _FIND_EXEC:
            end = next((j for j in range(i + 1, len(args)) if args[j] in (";", "+")), len(args))
            found.append(tuple(args[i + 1 : end]))
            i = end
        elif args[i] == "-delete":
            found.append(("rm", "-r", *starts))
        elif args[i] in _FIND_WRITES:
            result.simple = False
        i += 1
    return found


def _git_hidden(args: tuple[str, ...], result: Analysis) -> list[str | tuple[str, ...]]:
    """Aliases given with -c (`alias.x=!cmd` runs cmd); any -c or exec-path option hides code."""
    found: list[str | tuple[str, ...]] = []
    for i, arg in enumerate(args):
        if arg.startswith(_GIT_CODE_OPTIONS):
            result.wrapper = True  # config and helpers that run programs
        value = args[i + 1] if arg == "-c" and i + 1 < len(args) else arg.removeprefix("-c")
        key, _, val = value.partition("=")
        if arg.startswith("-c") and key.lower().startswith("alias.") and val.startswith("!"):
            found.append(val[1:])
    return found


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
