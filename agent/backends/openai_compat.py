"""Any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server) as a model backend.

Spec form: `openai:URL#MODEL`, e.g. `openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct`.
Built on the official `openai` SDK: the key from `OPENAI_API_KEY` (or the variable
`--api-key-env` names), timeouts, retries with backoff on 429 and 5xx, TLS. Tools go in the
request's `tools` field with `tool_choice`; the server's `tool_calls` come back as Hermes
`<tool_call>` markup in the reply text, which the loop parses like any model's. The context
window is asked of the server (vLLM's `/v1/models` `max_model_len`, llama.cpp's `/props`), and
usage is the server's own count (its cached tokens never above its prompt tokens).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from agent.backends.base import (
    AppendResult,
    GenParams,
    MessageConversation,
    ModelBackend,
    Reply,
)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
FALLBACK_WINDOW = 32768  # when the server does not say (a warning names the assumption)


class EndpointError(Exception):
    """The server could not be reached or answered with an error."""


class EndpointUnreachable(EndpointError):
    """Nothing answered at the URL (refused, timed out, no such host)."""


class EndpointRefused(EndpointError):
    """The server refused the API key (401 or 403)."""


def parse_spec(spec: str) -> tuple[str, str]:
    """`openai:URL#MODEL` -> (base URL ending in /v1, model name)."""
    body = spec.removeprefix("openai:")
    url, _, model = body.partition("#")
    if not url.startswith(("http://", "https://")) or not model:
        raise ValueError(f"bad endpoint spec {spec!r}; use openai:http://HOST:PORT/v1#MODEL")
    return url.rstrip("/"), model


class OpenAIBackend(ModelBackend):
    """Streams `/chat/completions` through the openai SDK; the server keeps the KV."""

    def __init__(self, spec: str, context_window: int | None = None, timeout_s: float = 600.0,
                 api_key_env: str | None = None, max_retries: int = 3):
        import openai

        from runtime import settings

        self.url, self.model = parse_spec(spec)
        self.name = spec
        self.fingerprint = f"openai:{self.url}#{self.model}"
        key = settings.environment(api_key_env or DEFAULT_KEY_ENV)
        if api_key_env and not key:
            raise ValueError(f"--api-key-env {api_key_env}: that variable is not set")
        # Keyless servers ignore the header; the SDK insists on some key.
        self.client = openai.OpenAI(base_url=self.url, api_key=key or "EMPTY",
                                    timeout=timeout_s, max_retries=max_retries)
        self.context_window = context_window or self._server_window()

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # the server's tokenizer is not ours: an estimate

    def template_supports_tools(self) -> bool:
        return True  # the server renders `tools` with its own template

    def conversation(self, tools, restore=None) -> OpenAIConversation:
        conv = OpenAIConversation(self, tools)
        if restore:
            conv.messages = list(restore["messages"])
        return conv

    def _server_window(self) -> int:
        """The window the server was started with: vLLM/SGLang's `max_model_len` in
        `/v1/models`, else llama.cpp's `n_ctx` in `/props`; FALLBACK_WINDOW when neither."""
        import logging

        for probe in (self._models_window, self._props_window):
            try:
                window = probe()
            except (EndpointUnreachable, EndpointRefused):
                raise  # a server that is down or refuses us: say so now, not mid-turn
            except EndpointError as e:
                logging.getLogger(__name__).debug("window probe failed: %s", e)
                continue
            if window:
                return int(window)
        logging.getLogger(__name__).warning(
            "%s did not report its context window; assuming %d tokens", self.url,
            FALLBACK_WINDOW)
        return FALLBACK_WINDOW

    def _models_window(self) -> int | None:
        probe = self.client.with_options(max_retries=1)
        for model in self._call(lambda: probe.models.list()).data:
            if model.id == self.model:
                return (model.model_extra or {}).get("max_model_len")
        return None

    def _props_window(self) -> int | None:
        root = self.url.removesuffix("/v1")
        probe = self.client.with_options(max_retries=1)
        props = self._call(lambda: probe.get(f"{root}/props", cast_to=object))
        settings = props.get("default_generation_settings") or {}
        return props.get("n_ctx") or settings.get("n_ctx")

    def stream(self, messages: list[dict[str, Any]], params: GenParams,
               tools: list[dict[str, Any]] | None) -> Iterator[dict]:
        """The chunks of one streamed completion, as plain dicts."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p,
                                "stream_options": {"include_usage": True}}
        if params.seed is not None:
            body["seed"] = params.seed
        if tools and params.tool_choice != "none":
            body["tools"] = tools
            body["tool_choice"] = params.tool_choice
        chunks = self._call(lambda: self.client.chat.completions.create(**body))
        try:
            for chunk in chunks:
                yield chunk.model_dump(exclude_none=True)
        except Exception as e:
            raise _endpoint_error(self.url, e) from e

    def _call(self, request):
        try:
            return request()
        except Exception as e:
            raise _endpoint_error(self.url, e) from e


def _endpoint_error(url: str, e: Exception) -> Exception:
    """The SDK's errors as one line that names the fix; anything else as it is."""
    import openai

    if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
        return EndpointRefused(f"{url} refused the API key ({e.status_code}); set "
                               "OPENAI_API_KEY or name the variable with --api-key-env")
    if isinstance(e, openai.APIStatusError):
        return EndpointError(f"{url} answered {e.status_code}: {str(e.message)[:200]}")
    if isinstance(e, openai.APIConnectionError | openai.APITimeoutError):
        return EndpointUnreachable(f"cannot reach {url} ({type(e).__name__}); is the server "
                                   "running?")
    return e


class OpenAIConversation(MessageConversation):
    """The message list sent whole with each request (the server's prefix cache reuses it)."""

    def __init__(self, backend: OpenAIBackend, tools: list[dict[str, Any]] | None = None):
        self.backend = backend
        self.tools = tools or []
        self.messages: list[dict[str, Any]] = []
        self.last_reply: Reply | None = None
        self._prompt_tokens = 0
        self._open_calls: list[str] = []  # ids of the last reply's calls still owed a result

    @property
    def context_tokens(self) -> int:
        return self._prompt_tokens

    def count(self, messages: list[dict[str, Any]]) -> int:
        return self.backend.count_tokens("".join(str(m.get("content", "")) for m in messages))

    def append(self, messages, generation_prompt=True, progress=None, limit=None,
               cancel=None) -> AppendResult:
        n = self.check_room(messages, limit, self.backend.context_window)
        self.messages += [self._with_call_id(m) for m in messages]
        self._prompt_tokens += n
        return AppendResult(new_tokens=n)

    def fork(self) -> OpenAIConversation:
        """A copy whose open tool calls are answered: the API wants every call of the last
        reply answered before another message. The fork is a sub-agent started by one of
        them; their real results go to the conversation that made them."""
        child = super().fork()
        child.messages += [{"role": "tool", "tool_call_id": call_id,
                            "content": "(its result goes to the conversation that made it)"}
                           for call_id in self._open_calls]
        child._open_calls = []
        return child

    def _with_call_id(self, message: dict[str, Any]) -> dict[str, Any]:
        """A tool result answers the next open call of the last reply, in order."""
        if message.get("role") != "tool" or not self._open_calls:
            return message
        return {"role": "tool", "tool_call_id": self._open_calls.pop(0),
                "content": message["content"]}

    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        start, parts, finish, usage = time.perf_counter(), [], "stop", {}
        calls: dict[int, dict[str, Any]] = {}
        tools = params.tools if params.tools is not None else self.tools
        for chunk in self.backend.stream(self.messages, params, tools):
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                finish = choice.get("finish_reason") or finish
                _gather_calls(calls, delta.get("tool_calls") or [])
                if delta.get("content"):
                    parts.append(delta["content"])
                    yield delta["content"]
            if cancel.is_set():
                finish = "interrupted"
                break
        self._finish("".join(parts), [calls[i] for i in sorted(calls)], finish, usage, start)

    def _finish(self, text: str, calls: list[dict[str, Any]], finish: str,
                usage: dict[str, Any], start: float) -> None:
        self._prompt_tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        self.messages.append(message)
        self._open_calls = [c["id"] for c in calls]
        markup = "".join(_hermes(c) for c in calls)
        self.last_reply = Reply(text + markup, [], "length" if finish == "length" else finish,
                                time.perf_counter() - start, usage)


def _gather_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Streamed tool calls arrive in pieces by index: the id and name first, the arguments
    as string fragments."""
    for d in deltas:
        call = calls.setdefault(d.get("index", len(calls)), {
            "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = d.get("id") or call["id"] or f"call_{len(calls)}"
        fn = d.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""


def _hermes(call: dict[str, Any]) -> str:
    """A server's tool call as the `<tool_call>` markup the loop parses (bad JSON arguments
    stay a string, so the loop reports them to the model as a malformed call)."""
    fn = call["function"]
    try:
        args: Any = json.loads(fn["arguments"] or "{}")
    except json.JSONDecodeError:
        args = fn["arguments"]
    return f"<tool_call>{json.dumps({'name': fn['name'], 'arguments': args})}</tool_call>"
