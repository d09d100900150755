"""Any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server) as a model backend.

Spec form: `openai:URL#MODEL`, e.g. `openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct`.
The server keeps its own prefix cache; usage reports its cached tokens when it tells them.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from agent.backends.base import (
    AppendResult,
    GenParams,
    MessageConversation,
    ModelBackend,
    Reply,
)


class EndpointError(Exception):
    """The server could not be reached or answered with an error."""


def parse_spec(spec: str) -> tuple[str, str]:
    """`openai:URL#MODEL` -> (base URL ending in /v1, model name)."""
    body = spec.removeprefix("openai:")
    url, _, model = body.partition("#")
    if not url.startswith(("http://", "https://")) or not model:
        raise ValueError(f"bad endpoint spec {spec!r}; use openai:http://HOST:PORT/v1#MODEL")
    return url.rstrip("/"), model


class OpenAIBackend(ModelBackend):
    """Talks to `/chat/completions` with streaming; tools are described in the system prompt."""

    def __init__(self, spec: str, context_window: int = 32768, timeout_s: float = 600.0):
        self.url, self.model = parse_spec(spec)
        self.name = spec
        self.context_window = context_window
        self.fingerprint = f"openai:{self.url}#{self.model}"
        self.timeout_s = timeout_s

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # the server's tokenizer is not ours: an estimate

    def template_supports_tools(self) -> bool:
        return False

    def conversation(self, tools, restore=None) -> OpenAIConversation:
        conv = OpenAIConversation(self)
        if restore:
            conv.messages = list(restore["messages"])
        return conv

    def stream(self, messages: list[dict[str, Any]], params: GenParams) -> Iterator[dict]:
        body = {"model": self.model, "messages": messages, "stream": True,
                "max_tokens": params.max_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "stream_options": {"include_usage": True}}
        if params.seed is not None:
            body["seed"] = params.seed
        req = urllib.request.Request(f"{self.url}/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                yield from _sse_chunks(resp)
        except urllib.error.HTTPError as e:
            raise EndpointError(f"{self.url} answered {e.code}: {e.read()[:200]!r}") from e
        except (urllib.error.URLError, OSError) as e:
            raise EndpointError(f"cannot reach {self.url} ({e}); is the server running?") from e


def _sse_chunks(resp) -> Iterator[dict]:
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class OpenAIConversation(MessageConversation):
    def __init__(self, backend: OpenAIBackend):
        self.backend = backend
        self.messages: list[dict[str, Any]] = []
        self.last_reply: Reply | None = None
        self._prompt_tokens = 0

    @property
    def context_tokens(self) -> int:
        return self._prompt_tokens

    def count(self, messages: list[dict[str, Any]]) -> int:
        return self.backend.count_tokens("".join(str(m.get("content", "")) for m in messages))

    def append(self, messages, generation_prompt=True, progress=None, limit=None,
               cancel=None) -> AppendResult:
        n = self.check_room(messages, limit, self.backend.context_window)
        self.messages += messages
        self._prompt_tokens += n
        return AppendResult(new_tokens=n)

    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        start, parts, finish, usage = time.perf_counter(), [], "stop", {}
        for chunk in self.backend.stream(self.messages, params):
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                delta = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                if delta:
                    parts.append(delta)
                    yield delta
            if cancel.is_set():
                finish = "interrupted"
                break
        text = "".join(parts)
        self._prompt_tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        self.messages.append({"role": "assistant", "content": text})
        self.last_reply = Reply(text, [], "length" if finish == "length" else finish,
                                time.perf_counter() - start, usage)
