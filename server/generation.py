"""One generation as the API handlers see it: submit a job, await its events, finish it.

Shared by the OpenAI and Anthropic handlers: the window check, sampling from request fields,
tool-call constraints, and the splitter that streams content while holding back tool-call
markup (sent as structured calls at the end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from runtime.constraints import tool_call_constraint
from runtime.engine.postprocess import StreamEvent
from runtime.engine.sampling import SamplingParams
from runtime.errors import ContextTooLong, InvalidSampling, OutOfPages
from server.engine_worker import Busy, Closed, EngineWorker, Job, Usage
from server.http import HttpError

CALL_MARK = "<tool_call>"


@dataclass
class Outcome:
    """A finished generation: its text, why it ended, what it cost."""

    text: str = ""
    finish_reason: str = "stop"
    last_token: int | None = None
    usage: Usage = field(default_factory=Usage)


def sampling(max_tokens: int, room: int, *, temperature: Any = None, top_p: Any = None,
             top_k: Any = None, seed: Any = None, stop: Any = None,
             constraint: Any = None) -> SamplingParams:
    """SamplingParams from API fields (None: the default), max_tokens clipped to the room
    left in the window; bad values are a 400."""
    if isinstance(stop, str):
        stop = [stop]
    try:
        return SamplingParams(
            temperature=1.0 if temperature is None else float(temperature),
            top_p=1.0 if top_p is None else float(top_p), top_k=int(top_k or 0),
            seed=None if seed is None else int(seed),
            max_tokens=max(1, min(int(max_tokens), room)),
            stop=tuple(str(s) for s in (stop or ())), constraint=constraint)
    except (InvalidSampling, TypeError, ValueError) as e:
        raise HttpError(400, f"bad sampling parameters: {e}") from e


def tool_constraint(model, tools: list[dict[str, Any]], choice: str):
    """Calls held to their schemas; "required" allows one call and nothing else."""
    if not tools or choice == "none":
        return None
    return tool_call_constraint(model.tokenizer, tools, required=choice == "required",
                                end_ids=sorted(model.engine.stop_ids))


def check_window(ids: list[int], window: int) -> int:
    """Room left for the reply; a 400 when the prompt alone fills the window."""
    if len(ids) >= window:
        raise HttpError(400, f"the prompt is {len(ids):,} tokens but the context window is "
                        f"{window:,}; shorten the conversation or the tool results",
                        kind="invalid_request_error")
    return window - len(ids)


class Generation:
    """A submitted job; iterate `tokens()` for StreamEvents, then read `outcome`."""

    def __init__(self, worker: EngineWorker, ids: list[int], params: SamplingParams,
                 session: str | None = None):
        self.job = Job(ids, params, asyncio.get_running_loop(), session=session)
        self.outcome = Outcome()
        self._first: tuple[str, Any] | None = None
        try:
            worker.submit(self.job)
        except Busy as e:
            raise HttpError(429, f"the server is busy ({e}); retry later",
                            {"Retry-After": str(e.retry_after)}, kind="rate_limit_error") from e
        except Closed as e:
            raise HttpError(503, str(e), {"Retry-After": "5"}, kind="overloaded_error") from e
        self._worker = worker
        self._done = False

    async def started(self) -> None:
        """Wait for the first event, so that an error before any token is still an HTTP
        error (a 400 for a prompt past the window) and not a broken stream."""
        self._first = await self.job.events.get()
        if self._first[0] == "error":
            self._done = True
            raise _http_error(self._first[1])

    async def tokens(self) -> AsyncIterator[StreamEvent]:
        try:
            while True:
                kind, value = self._first or await self.job.events.get()
                self._first = None
                if kind == "token":
                    self.outcome.text += value.text
                    self.outcome.last_token = value.token_id
                    yield value
                    continue
                self._done = True
                if kind == "error":
                    raise _http_error(value)
                self.outcome.finish_reason = value
                self.outcome.usage = self.job.usage
                return
        finally:
            self.cancel()

    async def run(self) -> Outcome:
        async for _ in self.tokens():
            pass
        return self.outcome

    def cancel(self) -> None:
        """Abort the job unless it ended (a client that went away)."""
        if not self._done:
            self.job.cancelled.set()
            self._worker.wake()


def _http_error(e: Exception) -> HttpError:
    if isinstance(e, HttpError):
        return e
    if isinstance(e, (ContextTooLong, InvalidSampling)):
        return HttpError(400, str(e))
    if isinstance(e, OutOfPages):
        return HttpError(503, str(e), {"Retry-After": "10"}, kind="overloaded_error")
    return HttpError(500, f"generation failed: {e}", kind="api_error")


class ToolSplitter:
    """Streams a reply's text but holds back tool-call markup: content before the first
    `<tool_call>` is released as soon as it cannot be the start of that mark."""

    def __init__(self, active: bool):
        self.active = active
        self._text = ""
        self._sent = 0
        self.in_call = False

    def push(self, delta: str) -> str:
        self._text += delta
        if not self.active:
            out, self._sent = self._text[self._sent:], len(self._text)
            return out
        if self.in_call:
            return ""
        at = self._text.find(CALL_MARK)
        if at >= 0:
            self.in_call = True
            end = at
        else:
            end = len(self._text)
            for k in range(min(len(CALL_MARK) - 1, len(self._text)), 0, -1):
                if self._text.endswith(CALL_MARK[:k]):
                    end -= k
                    break
        end = max(end, self._sent)
        out, self._sent = self._text[self._sent:end], end
        return out

    def rest(self, calls_parsed: bool) -> str:
        """Held-back text at the end: all of it unless it became structured calls."""
        if self.in_call and calls_parsed:
            return ""
        out, self._sent = self._text[self._sent:], len(self._text)
        return out
