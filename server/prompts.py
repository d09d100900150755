"""From API messages to the model's token ids, and from its text back to content and calls.

Both APIs are first normalised to chat messages of string content (`{"role", "content"}`)
plus OpenAI-style function schemas. Tools go through the chat template where it renders
them, else into the system message in the Hermes format the parser reads back. Message text
is encoded as plain text, so content holding `<|im_end|>` cannot forge a turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.backends.local import RENDER_OPTIONS
from agent.context import hermes_tools_block
from agent.tool_calls import parse_tool_calls
from runtime.local_model import LocalModel
from server.http import HttpError


@dataclass
class Chat:
    """A normalised chat request: messages with string content, function schemas."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


@dataclass
class ParsedReply:
    """The model's text as API content: text, and tool calls (name, arguments, id)."""

    text: str
    calls: list[dict[str, Any]]


class PromptRenderer:
    """Renders chats and raw prompts for one model."""

    def __init__(self, model: LocalModel):
        if model.template is None:
            raise ValueError(f"model {model.name} has no chat template; it cannot serve chats")
        self.model = model
        self.tools_in_template = "tools" in model.template.source

    def chat_ids(self, chat: Chat) -> list[int]:
        messages, tools = self._with_tools(chat)
        tok = self.model.tokenizer
        pieces = self.model.template.render_pieces([], messages, tools, True, **RENDER_OPTIONS)
        ids: list[int] = []
        for piece in pieces:
            ids += tok.encode(piece.text) if piece.markup else tok.encode_text(piece.text)
        return ids

    def text_ids(self, prompt: str) -> list[int]:
        return self.model.tokenizer.encode_text(prompt)

    def _with_tools(self, chat: Chat) -> tuple[list[dict[str, Any]], list[dict] | None]:
        if not chat.tools:
            return chat.messages, None
        if self.tools_in_template:
            return chat.messages, chat.tools
        block = hermes_tools_block(chat.tools)
        messages = list(chat.messages)
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + block}
        else:
            messages.insert(0, {"role": "system", "content": block})
        return messages, None

    def parse(self, text: str, with_tools: bool) -> ParsedReply:
        """Split tool-call markup out of the reply when the request offered tools."""
        if not with_tools:
            return ParsedReply(text, [])
        parsed = parse_tool_calls(text)
        calls = [{"id": c.call_id, "name": c.name, "arguments": c.arguments}
                 for c in parsed.calls if c.error is None]
        if len(calls) < len(parsed.calls):  # a malformed call stays visible as text
            return ParsedReply(text, [])
        return ParsedReply(parsed.text, calls)


def text_of(content: Any, where: str) -> str:
    """A message's content as one string: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict):
                raise HttpError(400, f"{where}: content parts must be objects")
            if part.get("type") in ("text", "input_text"):
                out.append(str(part.get("text", "")))
            elif part.get("type") == "tool_result":
                out.append(text_of(part.get("content"), where))
            else:
                raise HttpError(400, f"{where}: content of type {part.get('type')!r} is not "
                                "supported by this server (text only)")
        return "\n".join(out)
    raise HttpError(400, f"{where}: content must be a string or a list of parts")


def call_markup(name: str, arguments: Any) -> str:
    """An earlier tool call as the model writes one (Hermes markup)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError as e:
            raise HttpError(400, f"tool call {name!r}: arguments are not JSON ({e})") from e
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def function_schema(name: Any, description: Any, parameters: Any) -> dict[str, Any]:
    """One tool as an OpenAI function schema, checked."""
    if not isinstance(name, str) or not name:
        raise HttpError(400, "every tool needs a name")
    if parameters is not None and not isinstance(parameters, dict):
        raise HttpError(400, f"tool {name!r}: the parameters schema must be an object")
    return {"type": "function", "function": {
        "name": name, "description": str(description or ""),
        "parameters": parameters or {"type": "object", "properties": {}}}}
