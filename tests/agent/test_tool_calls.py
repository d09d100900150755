"""Tool-call parsing: Hermes and Llama 3.1 forms, and malformed calls as errors."""

from __future__ import annotations

from agent.tool_calls import parse_tool_calls


def test_plain_text_has_no_calls():
    parsed = parse_tool_calls("The answer is 5.")
    assert parsed.text == "The answer is 5." and parsed.calls == []


def test_hermes_calls_in_order():
    out = ('Let me look.\n<tool_call>\n{"name": "read", "arguments": {"path": "a.py"}}\n'
           '</tool_call>\n<tool_call>{"name": "grep", "arguments": {"pattern": "def"}}</tool_call>')
    parsed = parse_tool_calls(out)
    assert parsed.text == "Let me look."
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("read", {"path": "a.py"}), ("grep", {"pattern": "def"})]
    assert [c.call_id for c in parsed.calls] == ["call_1", "call_2"]
    assert all(c.error is None for c in parsed.calls)


def test_unterminated_hermes_call_still_parses():
    parsed = parse_tool_calls('<tool_call>{"name": "glob", "arguments": {"pattern": "*.py"}}')
    assert parsed.calls[0].name == "glob" and parsed.calls[0].error is None


def test_llama31_json_forms():
    a = parse_tool_calls('{"name": "read", "parameters": {"path": "x"}}')
    b = parse_tool_calls('<|python_tag|>{"name": "read", "arguments": "{\\"path\\": \\"x\\"}"}')
    assert a.calls[0].arguments == b.calls[0].arguments == {"path": "x"}


def test_malformed_calls_become_errors():
    bad = parse_tool_calls("<tool_call>{name: read}</tool_call>").calls[0]
    assert bad.error and "not valid JSON" in bad.error
    no_name = parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>').calls[0]
    assert no_name.error and '"name"' in no_name.error
    bad_args = parse_tool_calls('<tool_call>{"name": "read", "arguments": [1]}</tool_call>')
    assert bad_args.calls[0].error and "JSON object" in bad_args.calls[0].error
