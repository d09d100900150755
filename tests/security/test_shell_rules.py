"""Shell rules mean what they say: the allow-rule bypasses and the deny-rule spellings of the
issue, each a regression test, and the "always allow" suggestions kept as narrow as the call."""

from __future__ import annotations

import pytest

from agent.permissions import Permissions

ALLOW_BYPASSES = [
    "git status #\ntouch pwned",
    "git status\ntouch pwned",
    "git status <(touch pwned)",
    "git status >(touch pwned)",
    "git -c alias.x='!touch pwned' x",
    "git -c core.fsmonitor='touch pwned' status",
    "git --exec-path=/tmp status",
    "git status > ~/.bashrc",
    "git status >> .git/hooks/pre-commit",
    "git status 2> /tmp/x",
    "git log $(touch pwned)",
    "git log `touch pwned`",
    'git log "$(touch pwned)"',
    "git status; touch pwned",
    "git status && touch pwned",
    "git status || touch pwned",
    "git status | sh",
    "git status & touch pwned",
    "(git status)",
    "{ git status; }",
    "GIT_DIR=/tmp git status",
    "git status <<EOF\nx\nEOF",
    "git $X",
    "git status ${X:-$(touch pwned)}",
    "git ~`touch pwned`",  # bashlex's tilde node swallowed the substitution (found by the fuzz)
    "git ~root$(touch pwned)/x",
    "if git status; then touch pwned; fi",
    "git status 'unbalanced",
    "",
]

RM_SPELLINGS = [
    "git ~$(rm -rf /)",  # a substitution inside a tilde word
    "rm x",
    "rm -rf /",
    "/bin/rm x",
    "/usr/bin/rm -f x",
    "./rm x",
    "\\rm x",
    'r""m x',
    "'rm' x",
    '"rm" x',
    "{ rm x; }",
    "(rm x)",
    "ls; rm x",
    "ls && rm x",
    "ls || rm x",
    "ls | rm x",
    "ls & rm x",
    "ls\nrm x",
    "ls #\nrm x",
    "env rm x",
    "env -i rm x",
    "env -u HOME FOO=1 rm x",
    "env -S 'rm x'",
    "FOO=1 rm x",
    "nice rm x",
    "nice -n 5 rm x",
    "ionice -c 3 rm x",
    "timeout 5 rm x",
    "timeout -s KILL 5 rm x",
    "sudo rm x",
    "sudo -u root rm x",
    "doas rm x",
    "nohup rm x",
    "command rm x",
    "builtin rm x",
    "exec rm x",
    "stdbuf -oL rm x",
    "setsid rm x",
    "flock /tmp/l rm x",
    "xargs rm",
    "echo x | xargs -n 1 rm",
    "find . -name x -delete",
    "find . -exec rm {} \\;",
    "find . -execdir rm -f {} +",
    "sh -c 'rm x'",
    "bash -c 'rm x'",
    "bash -lc 'rm x'",
    "sh -c \"sh -c 'rm x'\"",
    "eval rm x",
    "eval 'rm x'",
    "echo `rm x`",
    "echo $(rm x)",
    "cat <(rm x)",
    "x=$(rm x)",
    "f() { rm x; }; f",
    "for i in 1; do rm x; done",
    "while true; do rm x; done",
    "if true; then rm x; fi",
    "! rm x",
    "watch rm x",
    "git -c alias.x='!rm x' x",
    "alias r='rm x'",
    "echo hi > >(rm x)",
    "time rm x",
    "time -p bash -c 'rm x'",
]

# spellings whose command is only known at run time: they cannot be read, so they are asked
UNREADABLE = [
    "$'rm' x",
    "$RM x",
    "${RM:-rm} x",
    "/bin/r? x",
    "/bin/r[m] x",
    "{rm,x}",
    "case a in a) rm x;; esac",
    "[[ -f x ]] && rm x",
    "echo $((1)) && rm x",
]


@pytest.mark.parametrize("command", ALLOW_BYPASSES)
def test_an_allow_rule_does_not_vouch_for_more_than_one_plain_command(command: str):
    perms = Permissions("ask", allow=["shell(git *)"])
    assert perms.check("shell", {"command": command}).action == "ask", command


def test_an_allow_rule_still_allows_its_plain_commands():
    perms = Permissions("ask", allow=["shell(git *)", "shell(pytest *)"])
    for command in ("git status", "git log -n 3 --oneline", "git", "pytest -q tests 2>&1",
                    "git diff > /dev/null", 'git commit -m "a; rm x"'):
        assert perms.check("shell", {"command": command}).action == "allow", command


@pytest.mark.parametrize("command", RM_SPELLINGS)
@pytest.mark.parametrize("mode", ["ask", "auto"])
def test_a_deny_rule_sees_through_every_spelling(command: str, mode: str):
    perms = Permissions(mode, allow=["shell"], deny=["shell(rm *)"])
    decision = perms.check("shell", {"command": command})
    assert decision.action == "deny", command
    assert "shell(rm *)" in decision.reason


@pytest.mark.parametrize("command", UNREADABLE)
def test_what_cannot_be_analysed_asks_except_in_auto(command: str):
    for mode in ("ask", "accept-edits"):
        perms = Permissions(mode, allow=["shell"], deny=["shell(rm *)"])
        assert perms.check("shell", {"command": command}).action in ("ask", "deny"), command


def test_plain_words_that_merely_mention_rm_are_not_denied():
    perms = Permissions("auto", deny=["shell(rm *)"])
    for command in ("echo rm", "grep -r 'rm x' .", "git commit -m 'rm x'", "ls rm", "rmdir x"):
        assert perms.check("shell", {"command": command}).action == "allow", command


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ("bash -c \"ls\"", "shell(bash -c ls)"),
        ("python -m pytest -q", "shell(python -m pytest *)"),
        ("python3 -c 'import os'", "shell(python3 -c 'import os')"),
        ("./build.sh --all", "shell(./build.sh --all)"),
        ("python tools/gen.py --fast", "shell(python tools/gen.py *)"),
        ("env FOO=1 pytest", "shell(env FOO=1 pytest)"),
        ("sudo make install", "shell(sudo make install)"),
        ("git status", "shell(git status *)"),
        ("pytest -q tests", "shell(pytest *)"),
        ("npm run test", "shell(npm run *)"),
        ("ls && rm x", None),
        ("make $(echo all)", None),
        ("eval ls", "shell(eval ls)"),
        ("bash -c 'rm -rf *'", "shell(bash -c 'rm -rf [*]')"),
        ("ls [abc]*", "shell(ls *)"),
        ("cat 'a*b'", "shell(cat *)"),
    ],
)
def test_always_allow_suggestions_are_as_narrow_as_the_command(command: str, rule: str | None):
    perms = Permissions("ask")
    decision = perms.check("shell", {"command": command})
    assert decision.action == "ask"
    assert decision.suggested_rule == rule
    if rule:
        for broad in ("shell(bash *)", "shell(python *)", "shell(env *)", "shell(python3 *)"):
            assert rule != broad
        perms.add_rule(rule)
        assert perms.check("shell", {"command": command}).action == "allow", rule


def test_a_suggested_exact_rule_does_not_match_other_commands():
    perms = Permissions("ask", allow=["shell(bash -c ls)"])
    assert perms.check("shell", {"command": "bash -c 'ls; touch pwned'"}).action == "ask"
    assert perms.check("shell", {"command": "bash -c ls"}).action == "allow"
    assert perms.check("shell", {"command": "bash -c ls x"}).action == "ask"
    perms = Permissions("ask", allow=["shell(sudo *)", "shell(bash *)", "shell(find *)"])
    for wrapped in ("sudo rm x", "bash -c 'rm x'", "find . -delete"):
        assert perms.check("shell", {"command": wrapped}).action == "ask", wrapped
