"""The local runtime as a model backend: the conversation is one engine sequence."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from agent.backends.base import AppendResult, Conversation, GenParams, ModelBackend, Reply
from runtime.engine.sampling import SamplingParams
from runtime.local_model import LocalModel


class TemplateDrift(Exception):
    """The chat template re-rendered earlier messages differently (the log is append-only)."""


class LocalBackend(ModelBackend):
    """Serves conversations from a LocalModel's engine."""

    def __init__(self, model: LocalModel):
        self.model = model
        self.name = model.name
        self.context_window = model.context_window
        self.fingerprint = model.fingerprint
        self.default_tool_choice = "auto" if self.template_supports_tools() else "first"

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.encode(text))

    def template_supports_tools(self) -> bool:
        template = self.model.template
        return template is not None and "tools" in template.source

    def flush(self) -> None:
        self.model.flush()

    def close(self) -> None:
        self.model.close()

    def kv_pages(self) -> dict[str, int] | None:
        stats = getattr(self.model.engine.kv, "stats", None)
        if stats is None:
            pool = self.model.engine.kv.pool
            return {"device": pool.num_pages - pool.num_free, "host": 0, "disk": 0,
                    "page_size": pool.layout.page_size}
        s = stats()
        return {"device": s["device"]["pages"] - s["device"]["free"],
                "host": s["host"]["cached"], "disk": s.get("disk", {}).get("own_files", 0),
                "page_size": self.model.engine.page_size}

    def conversation(self, tools, restore=None) -> LocalConversation:
        in_template = tools if self.template_supports_tools() else None
        conv = LocalConversation(self.model, in_template, schemas=tools)
        if restore:
            conv.carried = conv.restore(restore)
        return conv


class LocalConversation(Conversation):
    """Messages, the exact text the token log spells, and the engine sequence holding its KV."""

    def __init__(self, model: LocalModel, tools: list[dict[str, Any]] | None,
                 schemas: list[dict[str, Any]] | None = None):
        if model.template is None:
            raise ValueError(f"model {model.name} has no chat template; it cannot run the agent")
        self.model = model
        self.tools = tools  # given to the template (None: they are in the system prompt)
        self.schemas = schemas or []  # what tool calls are held to while decoding
        self.messages: list[dict[str, Any]] = []
        self.text = ""  # exactly the text of the token log, as rendered and generated
        self.seq = model.engine.new_sequence()
        self.last_reply: Reply | None = None

    @property
    def context_tokens(self) -> int:
        return len(self.seq.tokens)

    def append(self, messages, generation_prompt=True, progress=None) -> AppendResult:
        full = self.model.template.render(self.messages + messages, tools=self.tools,
                                          add_generation_prompt=generation_prompt)
        if not full.startswith(self.text):
            raise TemplateDrift("the chat template changed earlier turns when re-rendered; "
                                "this model's template cannot be used append-only")
        delta = full[len(self.text):]
        ids = self.model.tokenizer.encode(delta)
        result = self.model.engine.extend(self.seq, ids, progress)
        self.messages += messages
        self.text = full
        return AppendResult(len(ids), result.cached_tokens, result.cached_by_tier,
                            result.computed_tokens, result.seconds, ids, delta)

    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                  seed=params.seed, max_tokens=params.max_tokens,
                                  constraint=self._constraint(params.tool_choice))
        start, ids, finish = time.perf_counter(), [], "stop"
        stream = self.model.engine.generate(self.seq, sampling)
        for event in stream:
            ids.append(event.token_id)
            finish = event.finish_reason or finish
            if event.text:
                yield event.text
            if cancel.is_set() and not event.finish_reason:
                stream.close()
                finish = "interrupted"
                break
        self._finish(ids, finish, time.perf_counter() - start)

    def _constraint(self, tool_choice: str):
        """Tool calls held to their schemas; "required" allows nothing but one call."""
        from runtime.constraints import text_only_constraint, tool_call_constraint

        end_ids = sorted(self.model.engine.stop_ids)
        if tool_choice == "none":
            return text_only_constraint(self.model.tokenizer, end_ids)
        if not self.schemas:
            return None

        schemas = self.schemas
        if tool_choice == "required" and self.tools is None:
            # A model not trained on tools goes astray in optional arguments (read with
            # limit=1): a call it is made to write uses the required ones only.
            schemas = [_required_only(s) for s in schemas]
        return tool_call_constraint(self.model.tokenizer, schemas,
                                    required=tool_choice == "required",
                                    end_ids=end_ids)

    def _finish(self, ids: list[int], finish: str, seconds: float) -> None:
        tok = self.model.tokenizer
        spelled = tok.decode(ids)  # what the log now holds, end-of-turn token included
        stop = self.model.engine.stop_ids
        content_ids = ids[:-1] if ids and ids[-1] in stop else ids
        content = tok.decode(content_ids)
        self.text += spelled
        self.messages.append({"role": "assistant", "content": content})
        self.last_reply = Reply(content, ids, finish, seconds)

    def mark(self) -> dict[str, Any]:
        return {"messages": len(self.messages), "tokens": len(self.seq.tokens),
                "text": len(self.text)}

    def truncate(self, mark: dict[str, Any]) -> None:
        del self.messages[mark["messages"]:]
        self.text = self.text[: mark["text"]]
        self.model.engine.truncate(self.seq, mark["tokens"])

    def state(self) -> dict[str, Any]:
        return {"messages": self.messages, "text": self.text, "tokens": list(self.seq.tokens)}

    def restore(self, state: dict[str, Any]) -> AppendResult:
        """Rebuild from `state()`: the KV comes back from the cache tiers where it can."""
        self.messages = list(state["messages"])
        self.text = state["text"]
        # Nothing is computed here: what the cache lacks is computed with the next message, in
        # the chunks the first process used (in bf16 the output depends on them).
        result = self.model.engine.restore(self.seq, list(state["tokens"]))
        return AppendResult(len(state["tokens"]), result.cached_tokens, result.cached_by_tier,
                            result.computed_tokens, result.seconds)


def _required_only(schema: dict[str, Any]) -> dict[str, Any]:
    """A function schema narrowed to its required parameters."""
    fn = schema["function"]
    params = fn.get("parameters", {})
    keep = set(params.get("required", []))
    props = {k: v for k, v in params.get("properties", {}).items() if k in keep}
    return {**schema, "function": {**fn, "parameters": {**params, "properties": props}}}
