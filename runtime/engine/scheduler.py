"""Decide what each step computes. Deals only in ints and lists, never in tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.engine.model_runner import Work
from runtime.engine.sampling import SamplingParams
from runtime.engine.sequence import Sequence


@dataclass(slots=True)
class Request:
    """A sequence being generated for: its sampling, stops, and what it produced so far."""

    req_id: int
    seq: Sequence
    params: SamplingParams
    stop_ids: frozenset[int]
    max_len: int  # the model's context window
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded text, stop strings excluded
    emitted: int = 0  # characters of text already streamed
    finish_reason: str | None = None  # "stop" | "length" | "context"
    decoder: Any = None  # a StreamDecoder when the engine has a tokenizer

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Scheduler:
    """Splits pending tokens into work under a per-step token budget.

    Decode rows (one pending token) go first so generation never waits behind a long prefill;
    prefill is cut into chunks of at most `chunk` tokens, several sequences per step if the
    budget allows.
    """

    def __init__(self, chunk: int, max_batch_tokens: int):
        assert chunk >= 1 and max_batch_tokens >= chunk, "budget must hold at least one chunk"
        self.chunk = chunk
        self.max_batch_tokens = max_batch_tokens

    def schedule(self, seqs: list[Sequence]) -> list[Work]:
        """Work for one step over the sequences that still have pending tokens."""
        budget = self.max_batch_tokens
        work: list[Work] = []
        pending = [s for s in seqs if s.num_pending > 0]
        for seq in sorted(pending, key=lambda s: s.num_pending > 1):
            if budget <= 0:
                break
            n = min(seq.num_pending, self.chunk, budget)
            end = seq.num_computed + n
            work.append(Work(seq, seq.num_computed, end, want_logits=end == len(seq.tokens)))
            budget -= n
        return work
