"""gpt-oss's harmony format: the assistant's messages and tool calls in a reply.

A reply is a run of messages, each `<|start|>{header}<|message|>{body}` closed by `<|end|>`,
`<|call|>` (a tool call) or `<|return|>` (the final answer); the first message lacks its
`<|start|>assistant` (the generation prompt wrote it) and the last one its closing token (the
engine stops on it and leaves it out of the text). The header names the channel and, for a
tool call, the recipient, in either order, and an optional content type:

    <|channel|>analysis<|message|>The user wants the file.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.read <|constrain|>json<|message|>{"path": "a.py"}<|call|>
    <|start|>assistant to=functions.read<|channel|>commentary json<|message|>{"path": "a.py"}<|call|>
    <|channel|>final<|message|>Done.<|return|>

Channels: `analysis` (reasoning, not shown), `commentary` (tool calls; without a recipient, a
preamble for the user), `final` (the answer). Tools are `functions.NAME` and take the body as
their JSON arguments object.
"""  # noqa: E501

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.tool_calls import BadArguments, ParsedOutput, ToolCall, load_json

MARKERS = ("<|channel|>", "<|message|>")  # a reply in harmony has these; no other format does
_START = "<|start|>"
_MESSAGE = re.compile(
    r"(?P<header>.*?)<\|message\|>(?P<body>.*?)(?:<\|end\|>|<\|call\|>|<\|return\|>|\Z)", re.DOTALL
)
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_NAMESPACE = "functions."
_USAGE = "<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>"


@dataclass(frozen=True)
class HarmonyMessage:
    """One message of a reply: its channel, recipient (for a call) and body."""

    channel: str
    recipient: str | None
    body: str


def is_harmony(output: str) -> bool:
    """Whether `output` is written in the harmony format."""
    return any(marker in output for marker in MARKERS)


def split_messages(output: str) -> list[HarmonyMessage]:
    """The messages of a reply, in order; stray text outside any message is dropped."""
    messages = []
    for segment in output.split(_START):
        m = _MESSAGE.match(segment)
        if m is None:
            continue
        header = m.group("header")
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        messages.append(HarmonyMessage(
            channel.group(1) if channel else "final",
            recipient.group(1) if recipient else None,
            m.group("body"),
        ))  # fmt: skip
    return messages


def parse_harmony(output: str, first_id: int = 1) -> ParsedOutput:
    """The user-visible text (final answers and preambles) and the tool calls, in order;
    a malformed call comes back with `error` set, never raised."""
    text: list[str] = []
    calls: list[ToolCall] = []
    for message in split_messages(output):
        if message.recipient is not None:
            calls.append(_call(message, f"call_{first_id + len(calls)}"))
        elif message.channel in ("final", "commentary"):
            text.append(message.body.strip())
    return ParsedOutput("\n\n".join(t for t in text if t), calls)


def _call(message: HarmonyMessage, call_id: str) -> ToolCall:
    recipient = message.recipient or ""
    if not recipient.startswith(_NAMESPACE):
        return ToolCall(call_id, recipient, {}, f"unknown recipient {recipient!r}: call a tool "
                        f"as functions.NAME, e.g. {_USAGE}")
    name = recipient.removeprefix(_NAMESPACE)
    body = message.body.strip() or "{}"
    try:
        args = load_json(body)  # NaN, surrogates, huge ints, deep nesting: a tool error
    except BadArguments as e:
        return ToolCall(call_id, name, {}, f"{e}; write {_USAGE}")
    if not isinstance(args, dict):
        return ToolCall(call_id, name, {},
                        f"tool call arguments must be a JSON object; write {_USAGE}")
    return ToolCall(call_id, name, args)
