"""Tool calls in the DeepSeek families' own markup (and GLM-4.7-Flash's, served beside them).

DeepSeek-V3.2 / V4 write DSML; a parameter is a raw string (`string="true"`) or JSON, and an
invoke may hold one JSON object instead of parameters:

    <｜DSML｜function_calls>
    <｜DSML｜invoke name="read">
    <｜DSML｜parameter name="path" string="true">a.py</｜DSML｜parameter>
    <｜DSML｜parameter name="limit" string="false">20</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

DeepSeek-V3.1 writes `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{json}<｜tool▁call▁end｜>`, and
DeepSeek-V3 `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` then the arguments in a ```json
fence, all between `<｜tool▁calls▁begin｜>` and `<｜tool▁calls▁end｜>`. GLM-4.7 writes
`<tool_call>NAME<arg_key>k</arg_key><arg_value>v</arg_value>...</tool_call>` (values are
strings unless they are JSON objects, arrays, numbers or booleans). Text before the first call
is the assistant's text; a call that cannot be read comes back with `error` set.
"""

from __future__ import annotations

import re

from agent.tool_calls import BadArguments, ParsedOutput, ToolCall, load_json

DSML = "<｜DSML｜"
CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
_SEP = "<｜tool▁sep｜>"
_CALL_END = "<｜tool▁call▁end｜>"
_INVOKE = re.compile(r'<｜DSML｜invoke\s+name="([^"]*)"\s*>(.*?)(?:</｜DSML｜invoke>|\Z)',
                     re.DOTALL)
_PARAM = re.compile(r'<｜DSML｜parameter\s+name="([^"]*)"(?:\s+string="(true|false)")?\s*>'
                    r"(.*?)</｜DSML｜parameter>", re.DOTALL)
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_DSML_USAGE = ('write <｜DSML｜invoke name="TOOL"><｜DSML｜parameter name="ARG" '
               'string="true">value</｜DSML｜parameter></｜DSML｜invoke>')


def is_deepseek(output: str) -> bool:
    """Whether `output` holds calls in DeepSeek's markup."""
    return DSML in output or CALL_BEGIN in output


def parse_deepseek(output: str, first_id: int = 1) -> ParsedOutput:
    """The text before the first call, and every call (DSML or V3 / V3.1 markers)."""
    if DSML in output:
        text = output[: output.index(DSML)]
        bodies = [(name, body) for name, body in _INVOKE.findall(output)]
        calls = [_dsml_call(name, body, f"call_{first_id + i}")
                 for i, (name, body) in enumerate(bodies)]
    else:
        text = output[: output.index(CALLS_BEGIN if CALLS_BEGIN in output else CALL_BEGIN)]
        pieces = output.split(CALL_BEGIN)[1:]
        calls = [_marker_call(p.split(_CALL_END)[0], f"call_{first_id + i}")
                 for i, p in enumerate(pieces)]
    return ParsedOutput(text.strip(), calls)


def _dsml_call(name: str, body: str, call_id: str) -> ToolCall:
    if not name:
        return ToolCall(call_id, "", {}, f"tool call needs a name; {_DSML_USAGE}")
    params = _PARAM.findall(body)
    try:
        if not params and body.strip():
            args = load_json(body.strip())
            if not isinstance(args, dict):
                return ToolCall(call_id, name, {}, "the arguments must be a JSON object")
            return ToolCall(call_id, name, args)
        return ToolCall(call_id, name, {key: value if raw != "false" else load_json(value)
                                        for key, raw, value in params})
    except BadArguments as e:
        return ToolCall(call_id, name, {}, f"tool call refused: {e}; {_DSML_USAGE}")


def _marker_call(piece: str, call_id: str) -> ToolCall:
    """`NAME<sep>{json}` (V3.1) or `function<sep>NAME\\n```json ...```` (V3)."""
    if _SEP not in piece:
        return ToolCall(call_id, "", {}, f"tool call lacks {_SEP} between name and arguments")
    head, rest = piece.split(_SEP, 1)
    name, args_text = head.strip(), rest
    if name == "function":  # V3: the name starts the rest, the arguments follow in a fence
        name, _, args_text = rest.partition("\n")
        name = name.strip()
    fenced = _FENCE.match(args_text)
    return _json_call(name, fenced.group(1) if fenced else args_text.strip(), call_id)


def _json_call(name: str, text: str, call_id: str) -> ToolCall:
    try:
        args = load_json(text) if text else {}
    except BadArguments as e:
        return ToolCall(call_id, name, {}, f"tool call refused: {e}; send the arguments as "
                        "one JSON object after the tool name")
    if not isinstance(args, dict):
        return ToolCall(call_id, name, {}, "the arguments must be a JSON object")
    return ToolCall(call_id, name, args)


def is_glm_body(body: str) -> bool:
    """Whether a `<tool_call>` body is GLM's `NAME<arg_key>...` rather than Hermes JSON."""
    return not body.lstrip().startswith("{")


def parse_glm_body(body: str, call_id: str) -> ToolCall:
    """One GLM-4.7 call: the name, then `<arg_key>` / `<arg_value>` pairs."""
    name = body.split("<arg_key>", 1)[0].strip()
    if not name or not re.fullmatch(r"[\w.\-]+", name):
        return ToolCall(call_id, "", {}, "tool call needs a tool name first, then "
                        "<arg_key>NAME</arg_key><arg_value>VALUE</arg_value> pairs")
    args = {}
    for key, value in _GLM_ARG.findall(body):
        args[key.strip()] = _glm_value(value)
    return ToolCall(call_id, name, args)


def _glm_value(value: str):
    """GLM writes strings as they are and other values as JSON."""
    stripped = value.strip()
    if stripped[:1] in ("{", "[") or stripped in ("true", "false", "null") or re.fullmatch(
            r"-?\d+(\.\d+)?([eE][-+]?\d+)?", stripped):
        try:
            return load_json(stripped)
        except BadArguments:
            return value
    return value
