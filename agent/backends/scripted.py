"""A scripted model for unit tests of the loop: replies come from a list, not from weights."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from agent.backends.base import (
    AppendResult,
    GenParams,
    MessageConversation,
    ModelBackend,
    Reply,
)

# A script step is the reply text, or a function of the messages so far returning it.
Step = str | Callable[[list[dict[str, Any]]], str]


class ScriptedBackend(ModelBackend):
    """Replies with the next step of `script`; `delay_s` per chunk simulates a slow model."""

    def __init__(self, script: list[Step], delay_s: float = 0.0, context_window: int = 32768):
        self.script = list(script)
        self.delay_s = delay_s
        self.name = "scripted"
        self.context_window = context_window
        self.fingerprint = "scripted"
        self.calls = 0
        self._lock = threading.Lock()  # sub-agents may ask for replies side by side

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def template_supports_tools(self) -> bool:
        return False

    def conversation(self, tools, restore=None) -> ScriptedConversation:
        conv = ScriptedConversation(self)
        if restore:
            conv.messages = list(restore["messages"])
        return conv

    def next_reply(self, messages: list[dict[str, Any]]) -> str:
        with self._lock:
            if self.calls >= len(self.script):
                raise RuntimeError("the script has no more replies")
            step = self.script[self.calls]
            self.calls += 1
        return step(messages) if callable(step) else step


class ScriptedConversation(MessageConversation):
    def __init__(self, backend: ScriptedBackend):
        self.backend = backend
        self.messages: list[dict[str, Any]] = []
        self.last_reply: Reply | None = None

    @property
    def context_tokens(self) -> int:
        return self.count(self.messages)

    def count(self, messages: list[dict[str, Any]]) -> int:
        return sum(self.backend.count_tokens(str(m.get("content", ""))) for m in messages)

    def append(self, messages, generation_prompt=True, progress=None, limit=None,
               cancel=None) -> AppendResult:
        n = self.check_room(messages, limit, self.backend.context_window)
        self.messages += messages
        return AppendResult(new_tokens=n, computed_tokens=n)

    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        text = self.backend.next_reply(self.messages)
        room = max(self.backend.context_window - self.context_tokens, 0) * 4
        text = text[: min(params.max_tokens * 4, room)]  # ~4 characters a token, as counted
        sent, finish = "", "stop"
        for i in range(0, len(text), 8):
            if cancel.is_set():
                finish = "interrupted"
                break
            if self.backend.delay_s:
                time.sleep(self.backend.delay_s)
            sent += text[i : i + 8]
            yield text[i : i + 8]
        self.messages.append({"role": "assistant", "content": sent})
        self.last_reply = Reply(sent, [], finish)
