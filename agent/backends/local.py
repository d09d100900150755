"""The local runtime as a model backend: the conversation is one engine sequence."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

from agent.backends.base import (
    AppendCancelled,
    AppendResult,
    ContextFull,
    Conversation,
    GenParams,
    ModelBackend,
    Reply,
)
from runtime.engine.sampling import SamplingParams
from runtime.local_model import LocalModel

# Template variables: Llama 3.1 puts tools in the first user message unless told otherwise,
# and the system message (instructions, tools, repository) is rendered before there is one.
RENDER_OPTIONS = {"tools_in_user_message": False}


class LocalBackend(ModelBackend):
    """Serves conversations from a LocalModel's engine."""

    conversation_type: type[LocalConversation]  # set below the class it names

    def __init__(self, model: LocalModel):
        self.model = model
        self.name = model.name
        self.context_window = model.context_window
        self.fingerprint = model.fingerprint
        self.default_tool_choice = "auto" if self.template_supports_tools() else "chain"

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.encode_text(text))

    def template_supports_tools(self) -> bool:
        template = self.model.template
        return template is not None and "tools" in template.source

    def flush(self) -> None:
        self.model.flush()

    def close(self) -> None:
        self.model.close()

    def memory_plan(self) -> dict[str, Any] | None:
        plan = self.model.plan
        return plan.to_dict() if plan is not None else None

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
        conv = self.conversation_type(self.model, in_template, schemas=tools)
        if restore:
            conv.carried = conv.restore(restore)
        return conv


class LocalConversation(Conversation):
    """Messages, and the engine sequence whose tokens are the log the model has seen.

    The log only grows: each append renders the new messages as the template's delta after
    the earlier messages, and the earlier text is never compared with the log (what was
    generated stays as generated). `_bridge` is the template text owed after a reply, e.g.
    the newline after `<|im_end|>`, or `<|im_end|>` itself after a reply that was cut."""

    def __init__(self, model: LocalModel, tools: list[dict[str, Any]] | None,
                 schemas: list[dict[str, Any]] | None = None):
        if model.template is None:
            raise ValueError(f"model {model.name} has no chat template; it cannot run the agent")
        self.model = model
        self.tools = tools  # given to the template (None: they are in the system prompt)
        self.schemas = schemas or []  # what tool calls are held to while decoding
        self.messages: list[dict[str, Any]] = []
        self.seq = model.engine.new_sequence()
        self.last_reply: Reply | None = None
        self._bridge = ""
        # Another driver of the model's engine (sub-agents side by side share one thread's).
        self.engine_override: Any = None

    @property
    def engine(self):
        """The engine this conversation's calls go to."""
        return self.engine_override or self.model.engine

    @property
    def context_tokens(self) -> int:
        return len(self.seq.tokens)

    @property
    def window(self) -> int:
        return self.engine.max_context

    def encode(self, messages: list[dict[str, Any]], generation_prompt: bool = True
               ) -> tuple[list[int], str]:
        """The ids and text `messages` add: markup with its special tokens, message text as
        plain text (a file holding `<|im_end|>` cannot forge a turn)."""
        tok = self.model.tokenizer
        pieces = self.model.template.render_pieces(self.messages, messages, self.tools,
                                                   generation_prompt, **RENDER_OPTIONS)
        ids = tok.encode(self._bridge)
        for piece in pieces:
            ids += tok.encode(piece.text) if piece.markup else tok.encode_text(piece.text)
        return ids, self._bridge + "".join(p.text for p in pieces)

    def append(self, messages, generation_prompt=True, progress=None, limit=None,
               cancel=None) -> AppendResult:
        ids, text = self.encode(messages, generation_prompt)
        before = len(self.seq.tokens)
        limit = self.window if limit is None else min(limit, self.window)
        if before + len(ids) > limit:
            raise ContextFull(before, len(ids), limit, self.window)
        try:
            result = self.engine.extend(self.seq, ids, _cancellable(progress, cancel))
        except AppendCancelled:
            self.engine.truncate(self.seq, before)
            raise
        self.messages += messages
        self._bridge = ""
        return AppendResult(len(ids), result.cached_tokens, result.cached_by_tier,
                            result.computed_tokens, result.seconds, ids, text)

    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        room = self.window - len(self.seq.tokens)
        sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                  seed=params.seed, max_tokens=max(1, min(params.max_tokens, room)),
                                  constraint=self._constraint(params.tool_choice, params.tools))
        start, ids, finish = time.perf_counter(), [], "stop"
        stream = self.engine.generate(self.seq, sampling)
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

    def _constraint(self, tool_choice: str, narrowed: list[dict[str, Any]] | None = None):
        """Tool calls held to their schemas (`narrowed` ones when the loop's policy gives
        them); "required" allows nothing but one call."""
        from runtime.constraints import text_only_constraint, tool_call_constraint

        spec = self._constraint_spec(tool_choice, narrowed)
        if spec is None:
            return None
        end_ids = sorted(self.engine.stop_ids)
        if spec["kind"] == "text_only":
            return text_only_constraint(self.model.tokenizer, end_ids)
        return tool_call_constraint(self.model.tokenizer, spec["schemas"],
                                    required=spec["required"], end_ids=end_ids)

    def _constraint_spec(self, tool_choice: str, narrowed: list[dict[str, Any]] | None
                         ) -> dict[str, Any] | None:
        """What the constraint holds, as data: {"kind": "text_only"} or {"kind": "tools",
        "schemas", "required"}; None when unconstrained."""
        if tool_choice == "none":
            return {"kind": "text_only"}
        required = tool_choice == "required"
        if narrowed is not None:
            return {"kind": "tools", "schemas": narrowed, "required": required}
        if not self.schemas:
            return None
        schemas = self.schemas
        if required and self.tools is None:
            # A model not trained on tools goes astray in optional arguments (read with
            # limit=1): a call it is made to write uses the required ones only.
            schemas = [_required_only(s) for s in schemas]
        return {"kind": "tools", "schemas": schemas, "required": required}

    def _finish(self, ids: list[int], finish: str, seconds: float) -> None:
        tok = self.model.tokenizer
        stop = self.engine.stop_ids
        content = tok.decode(ids[:-1] if ids and ids[-1] in stop else ids)
        self.messages.append({"role": "assistant", "content": content})
        self._bridge = self._bridge_after(tok.decode(ids))
        self.last_reply = Reply(content, ids, finish, seconds)

    def _bridge_after(self, spelled: str) -> str:
        """The template text between a reply as generated (`spelled`, its end token included)
        and the next message."""
        template, before = self.model.template, self.messages[:-1]
        opened = template.render(before, self.tools, True, **RENDER_OPTIONS)
        full = template.render(self.messages, self.tools, False, **RENDER_OPTIONS)
        rendered = full[len(opened):] if full.startswith(opened) else ""
        if rendered.startswith(spelled):
            return rendered[len(spelled):]
        ends = [self.model.tokenizer.decode([i]) for i in self.engine.stop_ids]
        at, end = max(((rendered.rfind(e), e) for e in ends if e), default=(-1, ""))
        if at < 0:  # the template writes no end token: nothing is owed
            return ""
        return rendered[at + len(end):] if spelled.endswith(end) else rendered[at:]

    def close(self) -> None:
        self.engine.release(self.seq)

    def fork(self) -> LocalConversation:
        """The engine forks the sequence: full pages shared, the partial one copied."""
        child = copy.copy(self)
        child.seq = self.engine.fork(self.seq)
        child.messages = list(self.messages)
        child.last_reply, child.carried = None, None
        return child

    def mark(self) -> dict[str, Any]:
        return {"messages": len(self.messages), "tokens": len(self.seq.tokens),
                "bridge": self._bridge}

    def truncate(self, mark: dict[str, Any]) -> None:
        """Back to `mark` (from `mark()`, or a rewind's: messages, tokens, reply_ids)."""
        del self.messages[mark["messages"]:]
        self.engine.truncate(self.seq, mark["tokens"])
        self._settle_bridge(mark)

    def state(self) -> dict[str, Any]:
        return {"messages": self.messages, "tokens": list(self.seq.tokens),
                "bridge": self._bridge}

    def restore(self, state: dict[str, Any]) -> AppendResult:
        """Rebuild from the token log and the messages: the KV comes back from the cache tiers
        where it can. `reply_ids`, the last reply's ids when the log ends with one, give the
        template text still owed after it (else `bridge`)."""
        self.messages = list(state["messages"])
        # Nothing is computed here: what the cache lacks is computed with the next message, in
        # the chunks the first process used (in bf16 the output depends on them).
        result = self.engine.restore(self.seq, list(state["tokens"]))
        self._settle_bridge(state)
        return AppendResult(len(state["tokens"]), result.cached_tokens, result.cached_by_tier,
                            result.computed_tokens, result.seconds)


    def _settle_bridge(self, state: dict[str, Any]) -> None:
        """The text owed after the log's last reply: recomputed from its ids when given."""
        self._bridge = state.get("bridge", "")
        ends_with_reply = bool(self.messages) and self.messages[-1]["role"] == "assistant"
        if state.get("reply_ids") is not None and ends_with_reply:
            self._bridge = self._bridge_after(self.model.tokenizer.decode(state["reply_ids"]))


def _cancellable(progress, cancel: threading.Event | None):
    """A prefill progress callback that also stops the prefill when `cancel` is set."""
    if cancel is None:
        return progress

    def report(done: int, total: int) -> None:
        if cancel.is_set() and done < total:
            raise AppendCancelled(f"cancelled after {done} of {total} tokens")
        if progress is not None:
            progress(done, total)

    return report


def _required_only(schema: dict[str, Any]) -> dict[str, Any]:
    """A function schema narrowed to its required parameters."""
    fn = schema["function"]
    params = fn.get("parameters", {})
    keep = set(params.get("required", []))
    props = {k: v for k, v in params.get("properties", {}).items() if k in keep}
    return {**schema, "function": {**fn, "parameters": {**params, "properties": props}}}


LocalBackend.conversation_type = LocalConversation
