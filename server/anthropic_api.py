"""The Anthropic-compatible endpoint: /v1/messages (streaming, tool_use, cache usage)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from server.generation import Generation, Outcome, ToolSplitter, sampling, tool_constraint
from server.http import HttpError, Request, Response, Stream
from server.prompts import Chat, call_markup, function_schema, text_of

STOP = {"length": "max_tokens", "context": "max_tokens", "aborted": "end_turn"}


def chat_from_anthropic(body: dict[str, Any]) -> Chat:
    """System, messages (text, tool_use and tool_result blocks) and tools, normalised."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "'messages' must be a non-empty list")
    out = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": text_of(system, "system")})
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise HttpError(400, f"messages.{i}: role must be 'user' or 'assistant'")
        out += _message(m, f"messages.{i}")
    tools = []
    for t in body.get("tools") or []:
        if not isinstance(t, dict):
            raise HttpError(400, "each tool must be an object")
        tools.append(function_schema(t.get("name"), t.get("description"), t.get("input_schema")))
    return Chat(out, tools)


def _message(m: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = m.get("content")
    if isinstance(content, str) or content is None:
        return [{"role": m["role"], "content": content or ""}]
    if not isinstance(content, list):
        raise HttpError(400, f"{where}: content must be a string or a list of blocks")
    texts, results = [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            texts.append(call_markup(block.get("name"), block.get("input") or {}))
        elif kind == "tool_result":
            results.append({"role": "tool", "content": text_of(block.get("content"), where)})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # an earlier reply's reasoning: not part of what this model reads back
        elif kind in ("image", "document"):
            raise HttpError(400, f"{where}: {kind} blocks are not supported by this server "
                            "(text only)")
        else:
            raise HttpError(400, f"{where}: unknown content block {kind!r}")
    text = [{"role": m["role"], "content": "\n".join(texts)}] if texts else []
    return results + text


def tool_choice_of(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type") if isinstance(choice, dict) else None
    mapping = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}
    if kind not in mapping:
        raise HttpError(400, "tool_choice.type must be auto, any, tool or none")
    return mapping[kind]


def usage_of(o: Outcome) -> dict[str, Any]:
    u = o.usage
    return {"input_tokens": u.prompt_tokens - u.cached_tokens,
            "cache_read_input_tokens": u.cached_tokens, "cache_creation_input_tokens": 0,
            "output_tokens": u.completion_tokens}


class AnthropicEndpoints:
    """POST /v1/messages over the server's context."""

    def __init__(self, ctx):
        self.ctx = ctx

    async def messages(self, req: Request, stream: Stream) -> Response | None:
        body = req.json()
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            raise HttpError(400, "max_tokens: a positive integer is required")
        chat = self.ctx.prepare_chat(chat_from_anthropic(body), "anthropic")
        choice = tool_choice_of(body)
        ids = self.ctx.renderer.chat_ids(chat)
        room = self.ctx.room(ids)
        params = sampling(body["max_tokens"], room, temperature=self.ctx.temperature_of(body),
                          top_p=body.get("top_p"), top_k=body.get("top_k"),
                          stop=body.get("stop_sequences"),
                          constraint=tool_constraint(self.ctx.model, chat.tools, choice))
        gen = Generation(self.ctx.worker, ids, params)
        await gen.started()
        with_tools = bool(chat.tools) and choice != "none"
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            await self._stream(gen, stream, with_tools, msg_id)
            return None
        o = await gen.run()
        self.ctx.record(o, "messages")
        reply = self.ctx.renderer.parse(o.text, with_tools)
        blocks = [{"type": "text", "text": reply.text}] if reply.text else []
        blocks += [_tool_use(c) for c in reply.calls]
        return Response.of_json({
            "id": msg_id, "type": "message", "role": "assistant",
            "model": self.ctx.model_name, "content": blocks,
            "stop_reason": self._stop_reason(o, reply.calls, params.stop),
            "stop_sequence": None, "usage": usage_of(o)})

    async def _stream(self, gen: Generation, stream: Stream, with_tools: bool,
                      msg_id: str) -> None:
        async def send(kind: str, **data) -> None:
            await stream.send(json.dumps({"type": kind, **data}), event=kind)

        await stream.start()
        start_usage = {"input_tokens": gen.job.usage.prompt_tokens
                       - gen.job.usage.cached_tokens,
                       "cache_read_input_tokens": gen.job.usage.cached_tokens,
                       "cache_creation_input_tokens": 0, "output_tokens": 0}
        await send("message_start", message={
            "id": msg_id, "type": "message", "role": "assistant", "model": self.ctx.model_name,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage})
        await send("content_block_start", index=0, content_block={"type": "text", "text": ""})
        splitter = ToolSplitter(with_tools)
        async for event in gen.tokens():
            text = splitter.push(event.text)
            if text:
                await send("content_block_delta", index=0,
                           delta={"type": "text_delta", "text": text})
        o = gen.outcome
        self.ctx.record(o, "messages")
        reply = self.ctx.renderer.parse(o.text, with_tools)
        rest = splitter.rest(bool(reply.calls))
        if rest:
            await send("content_block_delta", index=0, delta={"type": "text_delta", "text": rest})
        await send("content_block_stop", index=0)
        for i, call in enumerate(reply.calls, start=1):
            await send("content_block_start", index=i,
                       content_block={**_tool_use(call), "input": {}})
            await send("content_block_delta", index=i, delta={
                "type": "input_json_delta", "partial_json": json.dumps(call["arguments"])})
            await send("content_block_stop", index=i)
        await send("message_delta", delta={
            "stop_reason": self._stop_reason(o, reply.calls, gen.job.params.stop),
            "stop_sequence": None}, usage={"output_tokens": o.usage.completion_tokens})
        await send("message_stop")
        await stream.end()

    def _stop_reason(self, o: Outcome, calls: list, stops: tuple[str, ...]) -> str:
        if calls:
            return "tool_use"
        if o.finish_reason == "stop" and stops and o.last_token not in self.ctx.stop_ids:
            return "stop_sequence"
        return STOP.get(o.finish_reason, "end_turn")


def _tool_use(c: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + c["id"].removeprefix("call_") +
            uuid.uuid4().hex[:8], "name": c["name"], "input": c["arguments"]}
