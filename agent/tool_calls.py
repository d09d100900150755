"""Find tool calls in model output: Hermes `<tool_call>{json}</tool_call>`, Llama 3.1 JSON,
gpt-oss's harmony messages (agent/harmony.py), and DeepSeek's and GLM's markup
(agent/deepseek_tool_calls.py).

Arguments are held to what every later step can carry (the store, the tokenizer, pydantic):
`load_json` and `check_json` turn NaN and infinities, lone surrogates, integers past 64 bits,
nesting past `MAX_JSON_DEPTH` and JSON that does not parse into `BadArguments`, whose one-line
message goes back to the model as the tool error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_JSON_DEPTH = 64
MAX_JSON_INT = 2**63


class BadArguments(ValueError):
    """Tool-call JSON the loop cannot carry; the message is one line for the model."""

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for. `error` is set when the call could not be understood."""

    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class ParsedOutput:
    """The assistant's text with tool-call markup removed, and the calls in order."""

    text: str
    calls: list[ToolCall]


def parse_tool_calls(output: str, first_id: int = 1) -> ParsedOutput:
    """Parse every call in `output`; malformed calls come back with `error` set, never raised."""
    from agent import deepseek_tool_calls, harmony  # they build on this module's types

    if harmony.is_harmony(output):
        return harmony.parse_harmony(output, first_id)
    if deepseek_tool_calls.is_deepseek(output):
        return deepseek_tool_calls.parse_deepseek(output, first_id)
    if "<tool_call>" in output:
        bodies = _HERMES.findall(output)
        text = output[: output.index("<tool_call>")].strip()
    elif output.lstrip().startswith(_PYTHON_TAG) or _looks_like_llama_json(output):
        bodies = [output.strip().removeprefix(_PYTHON_TAG)]
        text = ""
    else:
        return ParsedOutput(output.strip(), [])
    calls = [_parse_body(body, f"call_{first_id + i}") for i, body in enumerate(bodies)]
    return ParsedOutput(text, calls)


def _looks_like_llama_json(output: str) -> bool:
    s = output.strip()
    return s.startswith("{") and s.endswith("}") and '"name"' in s and (
        '"parameters"' in s or '"arguments"' in s)


def load_json(text: str) -> Any:
    """`json.loads` that raises BadArguments for everything `check_json` refuses."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except BadArguments:
        raise
    except json.JSONDecodeError as e:
        raise BadArguments(f"not valid JSON ({e.msg} at char {e.pos})") from None
    except RecursionError:
        raise BadArguments(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # an integer of thousands of digits, mostly
        what = "an integer too long to use" if "digits" in str(e) else _first_line(e)
        raise BadArguments(f"unusable JSON ({what})") from None
    check_json(value)
    return value


def check_json(value: Any) -> None:
    """Raise BadArguments unless `value` holds only finite numbers, 64-bit integers, valid
    Unicode and at most MAX_JSON_DEPTH levels of nesting (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadArguments(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            for key, inner in item.items():
                _check_scalar(key)
                stack.append((inner, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((inner, depth + 1) for inner in item)
        else:
            _check_scalar(item)


def _check_scalar(item: Any) -> None:
    if isinstance(item, bool) or item is None:
        return
    if isinstance(item, int) and not -MAX_JSON_INT <= item < MAX_JSON_INT:
        raise BadArguments(f"an integer with {len(str(abs(item)))} digits is out of range")
    if isinstance(item, float) and not math.isfinite(item):
        raise BadArguments(f"{item} is not a usable number; send a finite number")
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise BadArguments("a string holds a lone surrogate (\\ud800-\\udfff); "
                               "send valid Unicode") from None
    elif not isinstance(item, (int, float)):
        raise BadArguments(f"unexpected value of type {type(item).__name__}")


def _no_constant(name: str) -> Any:
    raise BadArguments(f"{name} is not valid JSON; send a finite number")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _parse_body(body: str, call_id: str) -> ToolCall:
    from agent import deepseek_tool_calls as glm

    if glm.is_glm_body(body):  # GLM-4.7: `NAME<arg_key>k</arg_key><arg_value>v</arg_value>`
        return glm.parse_glm_body(body, call_id)
    try:
        obj = load_json(body)
    except BadArguments as e:
        return ToolCall(call_id, "", {}, f"tool call refused: {e}; "
                        'write {"name": "<tool>", "arguments": {...}} inside <tool_call> tags')
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        need = 'tool call needs a "name" string and an "arguments" object'
        return ToolCall(call_id, "", {}, need)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = load_json(args)
        except BadArguments as e:
            return ToolCall(call_id, obj["name"], {}, f'"arguments" must be a JSON object ({e})')
    if not isinstance(args, dict):
        return ToolCall(call_id, obj["name"], {}, '"arguments" must be a JSON object')
    return ToolCall(call_id, obj["name"], args)
