"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from server.generation import Generation, Outcome, ToolSplitter, sampling, tool_constraint
from server.http import HttpError, Request, Response, Stream
from server.prompts import Chat, call_markup, function_schema, text_of

FINISH = {"stop": "stop", "length": "length", "context": "length", "aborted": "stop"}


def chat_from_openai(body: dict[str, Any]) -> Chat:
    """The request's messages and tools, normalised (a 400 for what is malformed)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user",
                                                          "assistant", "tool"):
            raise HttpError(400, f"messages[{i}] needs a role of system, user, assistant or tool")
        role = "system" if m["role"] == "developer" else m["role"]
        content = text_of(m.get("content"), f"messages[{i}]")
        for call in m.get("tool_calls") or []:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            content += ("\n" if content else "") + call_markup(fn.get("name"),
                                                               fn.get("arguments", "{}"))
        out.append({"role": role, "content": content})
    tools = []
    for t in body.get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict):
            raise HttpError(400, "each tool must be {'type': 'function', 'function': {...}}")
        tools.append(function_schema(fn.get("name"), fn.get("description"),
                                     fn.get("parameters")))
    return Chat(out, tools)


def tool_choice_of(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        return "required"  # a named function: the constraint holds it to the offered tools
    if choice not in ("auto", "none", "required"):
        raise HttpError(400, f"tool_choice must be auto, none, required or a function; "
                        f"got {choice!r}")
    return choice


def usage_of(o: Outcome) -> dict[str, Any]:
    u = o.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


class OpenAIEndpoints:
    """Handlers over the server's context (`ctx`: model, renderer, worker, stabiliser)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def models(self, req: Request) -> Response:
        return Response.of_json({"object": "list", "data": [
            {"id": self.ctx.model_name, "object": "model", "created": int(time.time()),
             "owned_by": "resident-agent"}]})

    async def chat(self, req: Request, stream: Stream) -> Response | None:
        body = req.json()
        _check_n(body)
        chat = self.ctx.prepare_chat(chat_from_openai(body), "openai")
        choice = tool_choice_of(body)
        ids = self.ctx.renderer.chat_ids(chat)
        room = self.ctx.room(ids)
        params = sampling(body.get("max_completion_tokens") or body.get("max_tokens") or room,
                          room, temperature=self.ctx.temperature_of(body), top_p=body.get("top_p"),
                          seed=body.get("seed"), stop=body.get("stop"),
                          constraint=tool_constraint(self.ctx.model, chat.tools, choice))
        gen = Generation(self.ctx.worker, ids, params)
        await gen.started()
        with_tools = bool(chat.tools) and choice != "none"
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            await self._stream_chat(gen, stream, with_tools, include)
            return None
        outcome = await gen.run()
        self.ctx.record(outcome, "chat_completions")
        reply = self.ctx.renderer.parse(outcome.text, with_tools)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.calls:
            message["tool_calls"] = [_call(c) for c in reply.calls]
        finish = "tool_calls" if reply.calls else FINISH.get(outcome.finish_reason, "stop")
        return Response.of_json({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": self.ctx.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage_of(outcome)})

    async def _stream_chat(self, gen: Generation, stream: Stream, with_tools: bool,
                           include_usage: bool) -> None:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.ctx.model_name}

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            return json.dumps({**base, "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": finish}], **extra})

        await stream.start()
        await stream.send(chunk({"role": "assistant", "content": ""}))
        splitter = ToolSplitter(with_tools)
        async for event in gen.tokens():
            text = splitter.push(event.text)
            if text:
                await stream.send(chunk({"content": text}))
        outcome = gen.outcome
        self.ctx.record(outcome, "chat_completions")
        reply = self.ctx.renderer.parse(outcome.text, with_tools)
        rest = splitter.rest(bool(reply.calls))
        if rest:
            await stream.send(chunk({"content": rest}))
        if reply.calls:
            calls = [{"index": i, **_call(c)} for i, c in enumerate(reply.calls)]
            await stream.send(chunk({"tool_calls": calls}))
        finish = "tool_calls" if reply.calls else FINISH.get(outcome.finish_reason, "stop")
        await stream.send(chunk({}, finish))
        if include_usage:
            await stream.send(json.dumps({**base, "choices": [], "usage": usage_of(outcome)}))
        await stream.send("[DONE]")
        await stream.end()

    async def completions(self, req: Request, stream: Stream) -> Response | None:
        body = req.json()
        _check_n(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise HttpError(400, "'prompt' must be a string (one prompt per request)")
        ids = self.ctx.renderer.text_ids(prompt)
        if not ids:
            raise HttpError(400, "'prompt' is empty")
        room = self.ctx.room(ids)
        params = sampling(body.get("max_tokens") or 16, room,
                          temperature=self.ctx.temperature_of(body), top_p=body.get("top_p"),
                          seed=body.get("seed"), stop=body.get("stop"))
        gen = Generation(self.ctx.worker, ids, params)
        await gen.started()
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": self.ctx.model_name}
        if body.get("stream"):
            await stream.start()
            async for event in gen.tokens():
                if event.text:
                    await stream.send(json.dumps({**base, "choices": [
                        {"index": 0, "text": event.text, "finish_reason": None,
                         "logprobs": None}]}))
            o = gen.outcome
            self.ctx.record(o, "completions")
            await stream.send(json.dumps({**base, "choices": [
                {"index": 0, "text": "", "logprobs": None,
                 "finish_reason": FINISH.get(o.finish_reason, "stop")}], "usage": usage_of(o)}))
            await stream.send("[DONE]")
            await stream.end()
            return None
        o = await gen.run()
        self.ctx.record(o, "completions")
        return Response.of_json({**base, "choices": [
            {"index": 0, "text": o.text, "logprobs": None,
             "finish_reason": FINISH.get(o.finish_reason, "stop")}], "usage": usage_of(o)})


def _check_n(body: dict[str, Any]) -> None:
    if (body.get("n") or 1) != 1:
        raise HttpError(400, "only n=1 is supported; send one request per completion")


def _call(c: dict[str, Any]) -> dict[str, Any]:
    return {"id": c["id"], "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
