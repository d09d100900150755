"""Find tool calls in model output: Hermes `<tool_call>{json}</tool_call>`, Llama 3.1 JSON, and
gpt-oss's harmony messages (agent/harmony.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

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
    from agent import harmony  # it builds on this module's types: imported here, not above

    if harmony.is_harmony(output):
        return harmony.parse_harmony(output, first_id)
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


def _parse_body(body: str, call_id: str) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(call_id, "", {}, f"tool call is not valid JSON ({e.msg} at char {e.pos}); "
                        'write {"name": "<tool>", "arguments": {...}} inside <tool_call> tags')
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        need = 'tool call needs a "name" string and an "arguments" object'
        return ToolCall(call_id, "", {}, need)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ToolCall(call_id, obj["name"], {}, '"arguments" must be a JSON object')
    if not isinstance(args, dict):
        return ToolCall(call_id, obj["name"], {}, '"arguments" must be a JSON object')
    return ToolCall(call_id, obj["name"], args)
