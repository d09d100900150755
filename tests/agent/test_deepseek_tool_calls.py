"""Tool calls in DeepSeek's markup (DSML for V3.2 / V4, the V3 and V3.1 markers) and GLM-4.7's,
through the loop's parser; malformed calls become errors for the model, never exceptions."""

from __future__ import annotations

from agent.tool_calls import parse_tool_calls

B, E = "<｜DSML｜", "</｜DSML｜"


def dsml(*invokes: str) -> str:
    return f"Reading it.\n\n{B}function_calls>\n" + "".join(invokes) + f"{E}function_calls>"


def invoke(name: str, body: str) -> str:
    return f'{B}invoke name="{name}">\n{body}\n{E}invoke>\n'


def param(key: str, value: str, string: bool = True) -> str:
    return f'{B}parameter name="{key}" string="{str(string).lower()}">{value}{E}parameter>\n'


def test_dsml_parameters_strings_and_json():
    out = dsml(invoke("read", param("path", "src/a b.py") + param("limit", "20", False)),
               invoke("grep", param("pattern", "def <x>") + param("opts", '{"i": true}', False)))
    parsed = parse_tool_calls(out, first_id=3)
    assert parsed.text == "Reading it."
    assert [(c.call_id, c.name, c.arguments, c.error) for c in parsed.calls] == [
        ("call_3", "read", {"path": "src/a b.py", "limit": 20}, None),
        ("call_4", "grep", {"pattern": "def <x>", "opts": {"i": True}}, None)]


def test_dsml_json_body_and_unterminated_invoke():
    out = f"{B}function_calls>\n" + f'{B}invoke name="glob">\n{{"pattern": "*.py"}}'
    [call] = parse_tool_calls(out).calls
    assert (call.name, call.arguments, call.error) == ("glob", {"pattern": "*.py"}, None)


def test_dsml_bad_json_parameter_is_an_error_for_the_model():
    [call] = parse_tool_calls(dsml(invoke("read", param("limit", "NaN", False)))).calls
    assert call.name == "read" and call.arguments == {}
    assert "NaN" in call.error and "DSML" in call.error and "\n" not in call.error


def test_v31_and_v3_markers():
    v31 = ("ok<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>read<｜tool▁sep｜>"
           '{"path": "a.py"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>shell<｜tool▁sep｜>'
           '{"command": "ls"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    parsed = parse_tool_calls(v31)
    assert parsed.text == "ok"
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("read", {"path": "a.py"}), ("shell", {"command": "ls"})]
    v3 = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>read\n"
          '```json\n{"path": "b.py"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    [call] = parse_tool_calls(v3).calls
    assert (call.name, call.arguments, call.error) == ("read", {"path": "b.py"}, None)


def test_marker_call_without_separator_or_with_a_list_is_an_error():
    bad = parse_tool_calls("<｜tool▁call▁begin｜>read{}<｜tool▁call▁end｜>").calls[0]
    assert "tool▁sep" in bad.error
    listed = parse_tool_calls("<｜tool▁call▁begin｜>read<｜tool▁sep｜>[1]<｜tool▁call▁end｜>")
    assert listed.calls[0].error == "the arguments must be a JSON object"


def test_glm_arg_pairs():
    out = ("Let me check.<tool_call>edit<arg_key>path</arg_key><arg_value>a.py</arg_value>"
           "<arg_key>count</arg_key><arg_value>3</arg_value>"
           "<arg_key>lines</arg_key><arg_value>[1, 2]</arg_value></tool_call>")
    parsed = parse_tool_calls(out)
    assert parsed.text == "Let me check."
    [call] = parsed.calls
    assert (call.name, call.arguments, call.error) == (
        "edit", {"path": "a.py", "count": 3, "lines": [1, 2]}, None)


def test_glm_body_without_a_name_is_an_error():
    [call] = parse_tool_calls("<tool_call>not a call</tool_call>").calls
    assert call.error and "<arg_key>" in call.error
