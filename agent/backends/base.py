"""The model backend contract: a conversation that grows by messages and streams replies."""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class ContextFull(Exception):
    """The messages (and the reply room after them) do not fit the model's window."""

    def __init__(self, context: int, adding: int, limit: int, window: int):
        self.context, self.adding, self.limit, self.window = context, adding, limit, window
        super().__init__(f"the context window is full: {context:,} tokens held, {adding:,} to "
                         f"add, {window:,} in the window")


class AppendCancelled(Exception):
    """An append was cancelled during its prefill; the context is as it was before it."""


@dataclass(frozen=True)
class GenParams:
    """What the agent asks of one reply."""

    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # "auto": free text or tool calls (calls held to their schemas where the backend can);
    # "required": exactly one tool call; "none": text only.
    tool_choice: str = "auto"
    # The schemas this reply's calls are held to, narrowed by the loop's tool policy (None:
    # every tool, as the conversation has them). Backends that cannot constrain ignore it.
    tools: list[dict[str, Any]] | None = None


@dataclass
class AppendResult:
    """What appending messages cost: new tokens, served from cache (by tier) or computed."""

    new_tokens: int = 0
    cached_tokens: int = 0
    cached_by_tier: dict[str, int] = field(default_factory=dict)
    computed_tokens: int = 0
    seconds: float = 0.0
    ids: list[int] = field(default_factory=list)  # token ids appended (local runtime only)
    text: str = ""  # the rendered text appended


@dataclass
class Reply:
    """A finished reply: full text (tool-call markup included), tokens, why it stopped."""

    text: str
    ids: list[int]
    finish_reason: str
    decode_s: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tok_s(self) -> float:
        return max(len(self.ids) - 1, 0) / self.decode_s if self.decode_s > 0 else 0.0


class Conversation(ABC):
    """One context on one model, append-only.

    Contract: `append` adds messages (rendered through the model's chat template as the delta
    against what is already in the context) and, with `generation_prompt`, opens an assistant
    turn; it raises ContextFull, changing nothing, when the context would pass `limit` tokens,
    and AppendCancelled, changing nothing, when `cancel` is set during a long prefill.
    `generate` then streams text deltas (never past the window) and stores the finished Reply
    in `last_reply`, adding the assistant message to `messages`. `truncate(mark)` returns to a
    `mark()` taken earlier. Errors from the model surface as exceptions of the backend; nothing
    is retried. The token log is the truth: earlier text is never rendered again to be compared.
    """

    messages: list[dict[str, Any]]
    last_reply: Reply | None = None
    # Work done outside a turn (the repository ingest, a restore), reported with the next turn.
    carried: AppendResult | None = None

    @abstractmethod
    def append(self, messages: list[dict[str, Any]], generation_prompt: bool = True,
               progress: Callable[[int, int], None] | None = None, limit: int | None = None,
               cancel: threading.Event | None = None) -> AppendResult:
        """Add messages to the context (and open an assistant turn); `progress(done, total)`
        follows a long prefill where the backend computes one."""

    @abstractmethod
    def generate(self, params: GenParams, cancel: threading.Event) -> Iterator[str]:
        """Stream the reply's text; stops early when `cancel` is set."""

    @abstractmethod
    def mark(self) -> dict[str, Any]:
        """A JSON-able position to come back to with `truncate`."""

    @abstractmethod
    def truncate(self, mark: dict[str, Any]) -> None:
        """Rewind to a mark; later messages and their KV are dropped."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this conversation in a new process (JSON-able)."""

    @property
    @abstractmethod
    def context_tokens(self) -> int:
        """Tokens resident in the context now (0 if unknown)."""

    def close(self) -> None:
        """Release what the context holds (its KV pages); the conversation is not used after."""
        return None

    def fork(self) -> Conversation:
        """A new conversation holding this whole context (on the local runtime its KV too:
        full pages shared, the partial one copied); the two go on independently. Called
        between steps: not while this one generates."""
        raise NotImplementedError(f"{type(self).__name__} cannot fork")


class MessageConversation(Conversation):
    """A conversation that is only its message list (a remote server keeps the KV, or none).

    Subclasses implement `append`/`generate` and `count`; marks, truncation, state and the
    window check are the list's."""

    messages: list[dict[str, Any]]

    def count(self, messages: list[dict[str, Any]]) -> int:
        """Tokens `messages` take (an estimate where the backend cannot tokenize)."""
        return sum(max(1, len(str(m.get("content", ""))) // 4) for m in messages)

    def check_room(self, messages: list[dict[str, Any]], limit: int | None, window: int) -> int:
        """Tokens of `messages`; raises ContextFull when they would pass `limit`."""
        n = self.count(messages)
        if limit is not None and self.context_tokens + n > limit:
            raise ContextFull(self.context_tokens, n, limit, window)
        return n

    def mark(self) -> dict[str, Any]:
        return {"messages": len(self.messages)}

    def truncate(self, mark: dict[str, Any]) -> None:
        del self.messages[mark["messages"]:]

    def state(self) -> dict[str, Any]:
        return {"messages": self.messages}

    def fork(self) -> MessageConversation:
        """A copy of the message list (a server's prefix cache serves what the two share)."""
        child = copy.copy(self)
        child.messages = list(self.messages)
        child.last_reply, child.carried = None, None
        return child


class ModelBackend(ABC):
    """A model the agent can talk to (the local runtime, an OpenAI-compatible server, a script)."""

    # The loop's policy when none is set: "auto", or "first" (the first reply of each turn calls
    # a tool, the next answers in words) for models not trained to call tools on their own.
    default_tool_choice: str = "auto"
    name: str
    context_window: int
    fingerprint: str  # identifies weights + settings; sessions remember it

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes (an estimate for remote models)."""

    @abstractmethod
    def template_supports_tools(self) -> bool:
        """True when the chat template renders `tools` itself (else they go in the prompt)."""

    @abstractmethod
    def conversation(self, tools: list[dict[str, Any]], restore: dict[str, Any] | None = None
                     ) -> Conversation:
        """A new conversation, or one rebuilt from `Conversation.state()` saved earlier."""

    def flush(self) -> None:
        """Make the work so far durable (the KV pages of the turn); called at each turn end."""
        return None

    def kv_pages(self) -> dict[str, int] | None:
        """Pages held per tier now ({"device", "host", "disk", "page_size"}), if there are any."""
        return None

    def memory_plan(self) -> dict[str, Any] | None:
        """The memory plan the model runs under (pages and bytes per tier), where there is one."""
        return None

    def close(self) -> None:
        """Release the model; the backend is not used afterwards."""
        return None
