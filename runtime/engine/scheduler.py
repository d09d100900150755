"""Decide what each step computes. Deals only in ints and lists, never in tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.engine.model_runner import Work
from runtime.engine.sampling import SamplingParams
from runtime.engine.sequence import Sequence


@dataclass(slots=True)
class Request:
    """A sequence being generated for: its sampling, stops, and what it produced so far.

    `outbox` holds the StreamEvents of steps not yet taken by whoever waits for this request;
    `error` is the exception that ended it early (finish reason "error")."""

    req_id: int
    seq: Sequence
    params: SamplingParams
    stop_ids: frozenset[int]
    max_len: int  # the model's context window
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded text, stop strings excluded
    emitted: int = 0  # characters of text already streamed
    finish_reason: str | None = None  # "stop" | "length" | "context" | "error" | "aborted"
    decoder: Any = None  # a StreamDecoder when the engine has a tokenizer
    outbox: list[Any] = field(default_factory=list)
    error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Scheduler:
    """Splits pending tokens into work under a per-step token budget.

    Every decoding sequence gets its token in every step (decode first); prefill fills what
    the budget (`max_batch_tokens`) leaves, in chunks of at most `chunk` tokens. A chunk is
    never cut to fit the budget (bf16 results depend on chunk boundaries, so a sequence's
    chunks must not depend on what else runs): one that does not fit waits for a later step,
    except the step's first, which always runs so prefill always progresses.

    Fairness: prefilling sequences are served least recently served first, so with P of them
    each gets a chunk at least every P steps, and a step computes at most
    `max(max_batch_tokens, chunk + decode rows)` tokens. A long prefill therefore delays
    another session's next token by at most one such step (one chunk's forward).
    """

    def __init__(self, chunk: int, max_batch_tokens: int):
        assert chunk >= 1 and max_batch_tokens >= chunk, "budget must hold at least one chunk"
        self.chunk = chunk
        self.max_batch_tokens = max_batch_tokens
        self._served: dict[int, int] = {}  # seq_id -> the tick it last got a chunk
        self._tick = 0

    def schedule(self, seqs: list[Sequence], decode_rows: int = 0) -> list[Work]:
        """Prefill work for one step over the sequences that still have pending tokens,
        after `decode_rows` single-token rows took their share of the budget."""
        self._tick += 1
        budget = self.max_batch_tokens - decode_rows
        work: list[Work] = []
        pending = [s for s in seqs if s.num_pending > 0]
        for seq in sorted(pending, key=lambda s: self._served.get(s.seq_id, 0)):
            n = min(seq.num_pending, self.chunk)
            if work and n > budget:
                continue
            end = seq.num_computed + n
            work.append(Work(seq, seq.num_computed, end, want_logits=end == len(seq.tokens)))
            self._served[seq.seq_id] = self._tick
            budget -= n
            if budget <= 0:
                break
        return work

    def forget(self, seq: Sequence) -> None:
        """The sequence left the engine's running set."""
        self._served.pop(seq.seq_id, None)
