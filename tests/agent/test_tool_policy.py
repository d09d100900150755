"""The tool-choice policy: the chain a weak model is walked through, and what it is held to."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.tool_calls import ToolCall
from agent.tool_policy import ToolPolicy, wants_edit
from agent.tools import default_tools
from agent.tools.base import ToolContext, run_tool
from agent.workspace import Workspace
from runtime.constraints import LINE_EDITS

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = [t.schema() for t in default_tools()]
FAILED = """\
    def test_average():
>       assert average([2, 4, 6]) == 4
E       assert 6.0 == 4
E        +  where 6.0 = average([2, 4, 6])

test_calc.py:13: AssertionError
1 failed, 2 passed in 0.05s
[exit code 1]"""
PASSED = "...\n3 passed in 0.01s\n[exit code 0]"


@pytest.fixture
def calc(tmp_path) -> Path:
    repo = tmp_path / "calc"
    shutil.copytree(ROOT / "examples" / "calculator", repo)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def names(choice) -> list[str]:
    return [s["function"]["name"] for s in choice.schemas or []]


def params(choice, i: int = 0) -> dict:
    return choice.schemas[i]["function"]["parameters"]


def call(name: str, **args) -> ToolCall:
    return ToolCall("c", name, args)


def test_edit_or_answer_from_the_prompt():
    assert wants_edit("fix the wrong return value in calc.py")
    assert wants_edit("Please rename foo to bar")
    assert not wants_edit("what does six's with_metaclass do?")
    assert not wants_edit("Read calc.py and tell me what add(2, 3) returns.")
    assert not wants_edit("How do I fix this?")
    assert wants_edit("Can you fix the bug in calc.py?")


def test_fix_chain_reads_tests_edits_the_failing_line_then_answers(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix the wrong return value in calc.py")
    first = policy.choose(0, False)
    assert first.tool_choice == "required" and names(first) == ["read", "grep", "glob"]
    assert params(first)["properties"]["path"]["enum"] == ["calc.py"]  # the file it names
    policy.observe(call("read", path="calc.py"), True)

    tests = policy.choose(1, False)
    assert names(tests) == ["shell"]
    command = params(tests)["properties"]["command"]["const"]
    assert "pytest" in command
    policy.observe(call("shell", command=command), False, FAILED)

    edit = policy.choose(2, False)
    assert names(edit) == ["edit"]
    spec = params(edit)[LINE_EDITS]
    assert spec["keys"] == ["path", "old_string", "new_string"]
    offered = spec["files"]["calc.py"]
    assert [e["old"] for e in offered] == ["return sum(values) / (len(values) - 1)"]
    assert "return a + b" in offered[0]["avoid"]  # no copy of another line
    assert "return sum(values) / len(values)" in offered[0]["choices"]  # likely repairs first
    policy.observe(call("edit", path="calc.py"), True)

    assert names(policy.choose(3, False)) == ["shell"]  # test the edit
    policy.observe(call("shell", command=command), True, PASSED)
    assert policy.choose(4, False).tool_choice == "none"


def test_failing_again_edits_again_until_the_limit(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix calc.py")
    policy.observe(call("read", path="calc.py"), True)
    command = params(policy.choose(1, False))["properties"]["command"]["const"]
    for step in range(3):
        policy.observe(call("shell", command=command), False, FAILED)
        assert names(policy.choose(2 + 2 * step, False)) == ["edit"]
        policy.observe(call("edit", path="calc.py"), True)
        assert names(policy.choose(3 + 2 * step, False)) == ["shell"]
    policy.observe(call("shell", command=command), False, FAILED)
    assert policy.choose(9, False).tool_choice == "none"  # MAX_EDITS reached


def test_refused_tests_are_skipped(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix the wrong return value in calc.py")
    policy.observe(call("read", path="calc.py"), True)
    command = params(policy.choose(1, False))["properties"]["command"]["const"]
    policy.observe(call("shell", command=command), False, "permission denied: shell asks")
    edit = policy.choose(2, False)
    offered = [e["old"] for e in params(edit)[LINE_EDITS]["files"]["calc.py"]]
    assert offered == ["return a + b", "return a * b", "return sum(values) / (len(values) - 1)"]
    policy.observe(call("edit", path="calc.py"), True)
    assert policy.choose(3, False).tool_choice == "none"


def test_a_question_reads_then_answers(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("what does average do in calc.py?")
    assert policy.choose(0, False).tool_choice == "required"
    policy.observe(call("read", path="calc.py"), True)
    assert policy.choose(1, False).tool_choice == "none"


def test_a_failed_call_is_retried_once_and_repeats_end_in_words(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix calc.py")
    first = policy.choose(0, False)
    policy.observe(call("read", path="nope.py"), False)
    assert policy.choose(1, False) == first
    policy.observe(call("read", path="nope.py"), False)
    assert names(policy.choose(2, False)) == ["read", "write"]  # nothing read: read or create
    assert policy.choose(3, True).tool_choice == "none"


def test_a_named_definition_in_a_long_file_is_read_as_a_window(tmp_path):
    body = "".join(f"def f{i}(x):\n    return x\n\n" for i in range(500))
    body += "def with_metaclass(meta, *bases):\n    return meta\n"
    (tmp_path / "six.py").write_text(body)
    (tmp_path / "other.py").write_text("x = 1\n")
    policy = ToolPolicy("chain", SCHEMAS, tmp_path)
    policy.start_turn("what does six's with_metaclass do?")
    read = params(policy.choose(0, False))
    assert read["properties"] == {"path": {"const": "six.py"}, "offset": {"const": 1499},
                                  "limit": {"const": 5}}


def test_other_modes_pass_through(calc):
    for mode, first, later in [("auto", "auto", "auto"), ("first", "required", "none"),
                               ("required", "required", "required"), ("none", "none", "none")]:
        policy = ToolPolicy(mode, SCHEMAS, calc)
        policy.start_turn("fix calc.py")
        assert (policy.choose(0, False).tool_choice, policy.choose(1, False).tool_choice) == (
            first, later)
        assert policy.choose(0, False).schemas is None
    with pytest.raises(ValueError, match="unknown tool choice"):
        ToolPolicy("sometimes", SCHEMAS, calc)


@pytest.mark.parametrize("bad", ["write", "wrote", "result", " x.py", "a."])
def test_write_refuses_a_path_that_is_a_bare_word(calc, bad):
    ctx = ToolContext(Workspace(calc))
    write = next(t for t in default_tools() if t.name == "write")
    result = run_tool(write, {"path": bad, "content": "x\n"}, ctx)
    assert not result.ok and "does not look like a file path" in result.content
    assert not (calc / bad.strip()).exists()


@pytest.mark.parametrize("good", ["notes.txt", "./Makefile", "docs/guide", ".env.example"])
def test_write_takes_a_path_that_looks_like_one(calc, good):
    ctx = ToolContext(Workspace(calc))
    write = next(t for t in default_tools() if t.name == "write")
    assert run_tool(write, {"path": good, "content": "x\n"}, ctx).ok


def test_edit_options_never_come_from_a_file_outside(calc, tmp_path):
    (tmp_path / "secret.py").write_text("TOKEN = 'hunter2'\n")
    (calc / "calc.py").unlink()
    (calc / "calc.py").symlink_to(tmp_path / "secret.py")
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix calc.py")
    policy.observe(call("read", path="calc.py"), True)  # as if the read had gone through
    command = params(policy.choose(1, False))["properties"]["command"]["const"]
    policy.observe(call("shell", command=command), False, FAILED)
    choice = policy.choose(2, False)
    assert choice.tool_choice == "none" and "hunter2" not in str(choice.schemas)


def test_an_edit_the_tests_fail_is_undone_and_never_tried_again(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix the wrong return value in calc.py")
    policy.observe(call("read", path="calc.py"), True)
    command = params(policy.choose(1, False))["properties"]["command"]["const"]
    assert "--tb=short" in command
    policy.observe(call("shell", command=command), False, FAILED)
    old, bad = "return sum(values) / (len(values) - 1)", "return 0"
    policy.observe(call("edit", path="calc.py", old_string=old, new_string=bad), True)
    policy.observe(call("shell", command=command), False, FAILED)
    undo = policy.choose(4, False)
    assert names(undo) == ["edit"] and params(undo)["properties"] == {
        "path": {"const": "calc.py"}, "old_string": {"const": bad}, "new_string": {"const": old}}
    policy.observe(call("edit", path="calc.py", old_string=bad, new_string=old), True)
    again = policy.choose(5, False)  # no test run: the tree is as the last run saw it
    offered = params(again)[LINE_EDITS]["files"]["calc.py"]
    assert [e["old"] for e in offered] == [old] and bad in offered[0]["avoid"]
    tried = "return sum(values) // (len(values) - 1)"
    policy.observe(call("edit", path="calc.py", old_string=old, new_string=tried), True)
    policy.observe(call("shell", command=command), False, FAILED)
    policy.observe(call("edit", path="calc.py", old_string=tried, new_string=old), True)
    again = params(policy.choose(8, False))[LINE_EDITS]["files"]["calc.py"][0]
    assert tried in again["avoid"] and tried in again["choices"]  # the grammar drops it


def test_the_last_failed_try_is_undone_before_the_answer(calc):
    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix calc.py")
    policy.observe(call("read", path="calc.py"), True)
    command = params(policy.choose(1, False))["properties"]["command"]["const"]
    policy.observe(call("shell", command=command), False, FAILED)
    old = "return sum(values) / (len(values) - 1)"
    for k, new in enumerate(["return 1", "return 2", "return 3"]):
        assert names(policy.choose(2 + 3 * k, False)) == ["edit"]
        policy.observe(call("edit", path="calc.py", old_string=old, new_string=new), True)
        policy.observe(call("shell", command=command), False, FAILED)
        undo = params(policy.choose(4 + 3 * k, False))["properties"]
        assert undo["new_string"] == {"const": old}
        policy.observe(call("edit", path="calc.py", old_string=new, new_string=old), True)
    assert policy.choose(11, False).tool_choice == "none"


def test_a_search_first_then_find_offers_calls_that_compile(calc):
    from runtime.constraints import tool_call_constraint
    from tests.runtime.test_constraints import END, byte_tokenizer

    policy = ToolPolicy("chain", SCHEMAS, calc)
    policy.start_turn("fix the wrong return value in calc.py")
    policy.observe(call("grep", pattern="return"), False, "no matches")
    policy.choose(1, False)  # the failed search is tried once more
    policy.observe(call("grep", pattern="return"), False, "no matches")
    find = policy.choose(2, False)
    assert names(find) == ["read", "write"]
    write = params(find, 1)
    assert set(write["required"]) <= set(write["properties"])  # content was unsatisfiable
    tool_call_constraint(byte_tokenizer(), find.schemas, required=True, end_ids=[END])
