"""The git tool's argument checks: what git would do with an argument, not how it is spelled.

git accepts any unique prefix of a long option (`--amen` is `--amend`), so guarded options are
refused in every abbreviation. Options that read or write a file (`--output`, `-F`, `-O`,
`--template`, `--pathspec-from-file`) and paths (plain or in `rev:path`) must stay inside the
workspace, and `--no-index` (which diffs any two files on the machine) is refused. Read deny
rules become pathspec excludes, so `git show`, `diff` and `log -p` leave those files out.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.tools.base import ReadPolicy, ToolError
from agent.workspace import Workspace

# long options never allowed: they write anywhere, diff outside files or rewrite history
_FORBIDDEN = ("output", "no-index", "amend", "output-directory", "exec-path", "git-dir",
              "work-tree", "upload-pack", "receive-pack", "config-env")
# long options whose value is a file git reads
_FILE_OPTIONS = ("file", "template", "pathspec-from-file", "orderfile")
_COMMIT_FILE_OPTIONS = ("-F", "-t")  # message file, template
_FIXUP_REWRITES = ("amend:", "reword:")


def check_args(sub: str, args: list[str], ws: Workspace, policy: ReadPolicy | None) -> list[str]:
    """`args` checked for `git sub` (ToolError if refused), with read-deny excludes added."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--"):
            _check_long(sub, arg, args[i + 1] if i + 1 < len(args) else None, ws, policy)
        elif _short_file_option(sub, arg):
            value = arg[2:] or (args[i + 1] if i + 1 < len(args) else "")
            _check_file(sub, arg, value, ws, policy)
    for path in _named_paths(args):
        _check_path(sub, path, ws, policy)
    if sub in ("show", "diff", "log") and policy is not None:
        return _with_excludes(args, ws, policy.denied_read_patterns())
    return list(args)


def _short_file_option(sub: str, arg: str) -> bool:
    if sub == "commit":
        return arg[:2] in _COMMIT_FILE_OPTIONS
    return arg.startswith("-O")  # diff/log/show -O<orderfile>


def _check_long(sub: str, arg: str, following: str | None, ws: Workspace,
                policy: ReadPolicy | None) -> None:
    name, eq, value = arg[2:].partition("=")
    if not name:
        return
    for full in _FORBIDDEN:
        if full.startswith(name):
            shown = f"--{full}" if name == full else f"--{name} (short for --{full})"
            raise ToolError(f"git {sub} {arg} is not allowed: {shown} is refused")
    if "fixup".startswith(name) and len(name) >= 2 and value.startswith(_FIXUP_REWRITES):
        raise ToolError(f"git {sub} {arg} is not allowed: it rewrites a commit")
    if sub == "commit" and any(f.startswith(name) and len(name) >= 2 for f in _FILE_OPTIONS):
        _check_file(sub, arg, value if eq else (following or ""), ws, policy)


def _check_file(sub: str, arg: str, value: str, ws: Workspace, policy: ReadPolicy | None) -> None:
    if value in ("", "-"):
        return
    _check_path(sub, value, ws, policy, option=arg)


def _named_paths(args: list[str]) -> list[str]:
    """Paths the arguments name: after `--`, in `rev:path`, and existing plain paths."""
    found, after_dashdash = [], False
    for arg in args:
        if arg == "--":
            after_dashdash = True
            continue
        if arg.startswith("-") and not after_dashdash:
            continue
        if after_dashdash:
            found.append(arg)
        elif ":" in arg:
            path = arg.split(":", 1)[1] if not arg.startswith(":/") else arg[2:]
            if path and not path.startswith(("(", "!")):
                found.append(path)
        elif os.path.isabs(arg) or ".." in Path(arg).parts or arg.startswith("~"):
            found.append(arg)
    return found


def _check_path(sub: str, path: str, ws: Workspace, policy: ReadPolicy | None,
                option: str | None = None) -> None:
    if path.startswith(":(") or path.startswith(":!"):
        return  # a pathspec with magic: matched inside the repository only
    real = Path(os.path.realpath(ws.root / Path(path).expanduser()))
    what = f"{option} {path}" if option else path
    if not ws.contains(real):
        raise ToolError(f"git {sub}: {what} is outside the workspace; use paths inside it")
    if policy is not None and not policy.may_read(ws.relative(real)):
        raise ToolError(f"git {sub}: {what} is covered by a read deny rule")


def _with_excludes(args: list[str], ws: Workspace, patterns: list[str]) -> list[str]:
    """`args` with `:(exclude)pattern` pathspecs for the read deny rules."""
    if not patterns:
        return list(args)
    excludes = [f":(exclude){p}" for p in patterns]
    if "--" in args:
        at = args.index("--")
        paths = args[at + 1 :] or ["."]
        return [*args[:at], "--", *paths, *excludes]
    revs, paths = [], []
    for arg in args:
        is_path = not arg.startswith("-") and ":" not in arg and os.path.lexists(ws.root / arg)
        (paths if is_path else revs).append(arg)
    return [*revs, "--", *(paths or ["."]), *excludes]
