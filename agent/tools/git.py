"""git: status, diff, log, show and commit; never push, never amend.

Arguments are checked by what git would make of them (agent/tools/git_args.py): abbreviated
options, files outside the workspace and read-denied paths are refused. git runs at the
workspace root (pathspecs are relative to it) in its own session, with the commands'
environment allowlist: a repository's hooks see no tokens, and what they leave running or do
past the timeout is killed with git.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import git
from pydantic import Field

from agent.tools.base import (
    MAX_STORED_OUTPUT_CHARS,
    MAX_TOOL_OUTPUT_CHARS,
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    ToolKind,
    ToolResult,
    clip_text,
    save_output,
)
from agent.tools.git_args import check_args
from agent.tools.processes import child_env, run_captured
from agent.tools.shell import NONINTERACTIVE_ENV

READ_SUBCOMMANDS = ("status", "diff", "log", "show")
ALLOWED = (*READ_SUBCOMMANDS, "commit")
GIT_TIMEOUT_S = 120
# who commits, when the user sets it in the environment rather than in git config
_GIT_IDENTITY_ENV = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                     "GIT_COMMITTER_EMAIL")
# -m, -F, -C alone or in a cluster (-am), or their long forms
_MESSAGE_ARG = re.compile(r"-[a-zA-Z]*[mFC]|--(message|file|reuse-message)(=|$)")


class GitArgs(ToolArgs):
    subcommand: str = Field(description="One of: " + ", ".join(ALLOWED) + ".")
    args: list[str] = Field(
        default_factory=list,
        description=(
            "Further arguments, e.g. ['--stat'], ['-n', '5', '--oneline'], ['-a'] for commit."
        ),
    )
    message: str | None = Field(None, description="The commit message (required for commit).")


class GitTool(Tool):
    """A narrow git: reading history and the worktree's state, and committing."""

    name = "git"
    description = (
        "Run git status, diff, log, show or commit in the repository. commit needs a message "
        "(and commits what is staged; add '-a' to args to include all tracked changes). "
        "push and amend are not available."
    )
    Args = GitArgs
    kind = "exec"
    main_arg = "subcommand"

    def __init__(self, pass_env: tuple[str, ...] = (), timeout_s: float = GIT_TIMEOUT_S) -> None:
        self.pass_env = (*_GIT_IDENTITY_ENV, *pass_env)
        self.timeout_s = timeout_s

    def kind_for(self, args: Mapping[str, Any]) -> ToolKind:
        """Reading subcommands are reads; commit changes the repository."""
        return "read" if self.rule_subject(args) in READ_SUBCOMMANDS else "exec"

    def rule_subject(self, args: Mapping[str, Any]) -> str:
        """The subcommand as git will run it: `" commit"` is `commit` to the rules too."""
        value = args.get("subcommand")
        return value.strip() if isinstance(value, str) else ""

    def run(self, args: GitArgs, ctx: ToolContext) -> ToolResult:
        sub = args.subcommand.strip()
        argv = [sub, *_checked_args(sub, args, ctx)]
        _open_repo(ctx)
        # hooks (a repository's pre-commit) run with the commands' environment allowlist too
        done = run_captured(["git", "-c", "color.ui=never", *argv], ctx.workspace.root,
                            child_env(NONINTERACTIVE_ENV, self.pass_env), self.timeout_s)
        code = done.exit_code
        parts = [_printable(b) for b in (done.stdout, done.stderr) if b.strip()]
        if code is None:
            parts.append(f"[git {sub} timed out after {self.timeout_s:g} s; it and its hooks "
                         "were killed]")
        text = "\n".join(parts) or "(no output)"
        content, stored, meta = text, text, {"exit_code": code, "subcommand": sub}
        if len(text) > MAX_TOOL_OUTPUT_CHARS:
            saved = save_output(ctx, f"git-{sub}", text)
            content, meta["output_file"] = clip_text(text, saved), str(saved)
            stored = clip_text(text, saved, MAX_STORED_OUTPUT_CHARS)
        return ToolResult(code == 0, content, full_output=stored, metadata=meta)


def _checked_args(sub: str, args: GitArgs, ctx: ToolContext) -> list[str]:
    if sub not in ALLOWED:
        raise ToolError(
            f"git {sub} is not available; use one of: {', '.join(ALLOWED)} "
            "(or the shell tool for other read-only git commands)"
        )
    checked = check_args(sub, list(args.args), ctx.workspace, ctx.read_policy)
    if sub != "commit":
        if args.message is not None:
            raise ToolError("message is only for commit")
        return checked
    if args.message is not None:
        return ["-m", args.message, *checked]
    if not any(_gives_message(a) for a in checked):
        raise ToolError("git commit needs a message: set the message argument")
    return checked


def _printable(data: bytes) -> str:
    # undecodable bytes become U+FFFD: the model's text must be valid Unicode
    return data.decode("utf-8", errors="replace").removesuffix("\n")


def _gives_message(arg: str) -> bool:
    return _MESSAGE_ARG.match(arg) is not None


def _open_repo(ctx: ToolContext) -> git.Repo:
    try:
        return git.Repo(ctx.workspace.root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
        raise ToolError(f"{ctx.workspace.root} is not a git repository") from e
