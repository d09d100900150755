"""The local runtime with scripted replies: real prompts, tokens, engine and KV tiers, but each
reply's text comes from a script instead of sampling (so sessions follow exact sequences).

A reply's tokens go through the engine as decoding would leave them in the KV (a `SLOW` one token
by token, so that `cancel` stops it between tokens). A step is the reply text, or a
function of the messages so far returning it; `SLOW` before a text makes it take a while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.backends.base import GenParams
from agent.backends.local import LocalBackend, LocalConversation
from runtime.local_model import LocalModel, RuntimeOptions
from tests.journeys.templates import chat

Step = str | Callable[[list[dict[str, Any]]], str]
SLOW = "\x00slow\x00"  # prefix: 0.05 s a token, for interrupts


def call(name: str, **arguments: Any) -> str:
    """A reply that is one Hermes-style tool call."""
    import json

    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


class ScriptedLocalBackend(LocalBackend):
    """A LocalBackend on the embedded model with one of the supported chat templates."""

    def __init__(self, model: LocalModel, template: str, script: list[Step]):
        supported = chat(template, model.path)
        model.template, model.tokenizer = supported.template, supported.tokenizer
        model.engine.stop_ids = supported.stop_ids
        self.end_id = supported.end_id
        super().__init__(model)
        self.fingerprint = f"{model.fingerprint}:{template}"
        self.script = list(script)

    @classmethod
    def open(cls, gguf: Path, template: str, script: list[Step]) -> ScriptedLocalBackend:
        model = LocalModel.open(str(gguf), RuntimeOptions(page_size=16, device="cpu"))
        return cls(model, template, script)

    def conversation(self, tools, restore=None) -> ScriptedConversation:
        in_template = tools if self.template_supports_tools() else None
        conv = ScriptedConversation(self, in_template, schemas=tools)
        if restore:
            conv.carried = conv.restore(restore)
        return conv


class ScriptedConversation(LocalConversation):
    def __init__(self, backend: ScriptedLocalBackend, tools, schemas):
        super().__init__(backend.model, tools, schemas)
        self.backend = backend

    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        if not self.backend.script:
            raise RuntimeError("the script has no more replies")
        step = self.backend.script.pop(0)
        text = step(self.messages) if callable(step) else step
        slow = text.startswith(SLOW)
        text = text.removeprefix(SLOW)
        tok, engine = self.model.tokenizer, self.engine  # a hub when sub-agents run side by side
        ids, finish, start = [], "stop", time.perf_counter()
        if not slow:  # all at once: the same KV as one token at a time, in one forward
            ids = [*tok.encode(text), self.backend.end_id]
            engine.extend(self.seq, ids)
            yield text
        for token in tok.encode(text) if slow else ():
            if cancel.is_set():
                finish = "interrupted"
                break
            engine.extend(self.seq, [token])
            ids.append(token)
            yield tok.decode([token])
            time.sleep(0.05)
        if slow and finish == "stop":
            engine.extend(self.seq, [self.backend.end_id])
            ids.append(self.backend.end_id)
        self._finish(ids, finish, time.perf_counter() - start)
