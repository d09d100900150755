"""gpt-oss harmony replies: channels, both header orders, malformed calls, and the loop."""

from __future__ import annotations

import pytest

from agent.events import Shutdown, ToolCallFinished, TurnFinished, UserInput
from agent.harmony import is_harmony, parse_harmony, split_messages
from agent.tool_calls import parse_tool_calls
from memory.store import SessionStore
from tests.agent.test_loop import of, run_session

THINK = "<|channel|>analysis<|message|>The user wants util.py read.<|end|>"


def harmony_call(name: str, args: str, recipient_first: bool = False) -> str:
    """A call as gpt-oss writes it after the generation prompt (no closing <|call|>: the
    engine stops on it)."""
    if recipient_first:
        return f"{THINK}<|start|>assistant to=functions.{name}<|channel|>commentary json" \
               f"<|message|>{args}"
    return f"{THINK}<|start|>assistant<|channel|>commentary to=functions.{name} " \
           f"<|constrain|>json<|message|>{args}"


@pytest.mark.parametrize("recipient_first", [False, True])
def test_call_in_either_header_order(recipient_first):
    parsed = parse_tool_calls(harmony_call("read", '{"path": "src/util.py"}', recipient_first))
    assert parsed.text == ""
    [call] = parsed.calls
    assert (call.call_id, call.name, call.arguments, call.error) == (
        "call_1", "read", {"path": "src/util.py"}, None)


def test_final_answer_and_preamble_are_the_text_reasoning_is_not():
    reply = (f"{THINK}<|start|>assistant<|channel|>commentary<|message|>Reading it now.<|end|>"
             "<|start|>assistant<|channel|>commentary to=functions.grep <|constrain|>json"
             '<|message|>{"pattern": "x"}<|call|>')
    parsed = parse_harmony(reply, first_id=4)
    assert parsed.text == "Reading it now."
    assert [(c.call_id, c.name) for c in parsed.calls] == [("call_4", "grep")]
    final = parse_harmony(f"{THINK}<|start|>assistant<|channel|>final<|message|>It adds one.")
    assert final.text == "It adds one." and final.calls == []
    assert [m.channel for m in split_messages(reply)] == ["analysis", "commentary", "commentary"]


@pytest.mark.parametrize("args, error", [
    ('{"path": ', "not valid JSON"),
    ('["a.py"]', "must be a JSON object"),
])
def test_malformed_arguments_become_errors(args, error):
    [call] = parse_harmony(harmony_call("read", args)).calls
    assert call.name == "read" and error in call.error and "functions.NAME" in call.error


def test_unknown_namespace_is_an_error():
    reply = "<|channel|>commentary to=browser.search<|message|>{}"
    [call] = parse_harmony(reply).calls
    assert call.name == "browser.search" and "functions.NAME" in call.error


def test_other_formats_are_not_harmony():
    assert not is_harmony('<tool_call>\n{"name": "read", "arguments": {}}\n</tool_call>')
    assert parse_tool_calls("plain text").text == "plain text"


def test_harmony_calls_round_trip_through_the_loop(git_repo, tmp_path):
    store = SessionStore(tmp_path / "data")
    script = [harmony_call("read", '{"path": "src/util.py"}'),
              "<|channel|>analysis<|message|>It returns x + 1.<|end|>"
              "<|start|>assistant<|channel|>final<|message|>helper returns x + 1."]
    _, events = run_session(git_repo, script, store,
                            [UserInput("what does helper return?"), Shutdown()])
    [finished] = of(events, ToolCallFinished)
    assert finished.name == "read" and finished.ok and "return x + 1" in finished.content
    turn = of(events, TurnFinished)[-1]
    assert turn.status == "done" and turn.text == "helper returns x + 1."
