"""The engine: sequences over paged KV; extend, one step() over many requests, fork, truncate."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from memory.device_pool import PagePoolExhausted
from memory.state_snapshots import interval_for
from runtime.engine.kv_pages import KVPages
from runtime.engine.model_runner import ModelRunner, Work
from runtime.engine.postprocess import (
    HostCopy,
    StreamEvent,
    may_continue,
    postprocess,
    stream_decoder,
)
from runtime.engine.results import ExtendResult, GenerationResult
from runtime.engine.sampler import Sampler
from runtime.engine.sampling import SamplingParams
from runtime.engine.scheduler import Request, Scheduler
from runtime.engine.sequence import BlockTable, Sequence
from runtime.errors import ContextTooLong, OutOfPages
from runtime.kernels.backend import AttentionBackend
from runtime.models.recurrent_state import SequenceStates


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the engine that do not change the model's output."""

    prefill_chunk: int = 512
    max_batch_tokens: int = 2048
    # Queue each decode step's forward before the host reads the token it consumes (see
    # Engine._decode_pipelined); None: on CUDA only, where the host and the GPU run apart.
    pipeline_decode: bool | None = None


class Engine:
    """Owns the model runner and the KV pages; every sequence's KV lives in `kv.pool`.

    Token-level API: `extend(seq, ids)` appends ids and computes their KV (reusing cached pages
    for a fresh sequence); `add_request(seq, params)` admits a generation and each `step()`
    advances every admitted one (a server's loop); `generate(seq, params)` streams one
    request's tokens by stepping; `fork` shares full pages and copies the partial one;
    `truncate` rewinds. Not thread-safe: one thread drives an engine.
    """

    def __init__(self, model: nn.Module, kv: KVPages, backend: AttentionBackend, *,
                 max_context: int, stop_ids: frozenset[int] = frozenset(), tokenizer=None,
                 config: EngineConfig = EngineConfig(), device: torch.device | str = "cpu"):
        self.kv = kv
        self.device = torch.device(device)
        self.page_size = kv.pool.layout.page_size
        self.max_context = max_context
        self.stop_ids = stop_ids
        self.tokenizer = tokenizer
        self.config = config
        # Hybrid models' linear-layer states, one slot per sequence (None for the others).
        self.states = SequenceStates.for_model(model, self.device)
        store = getattr(kv, "snapshots", None)
        if self.states is not None and store is not None and store.every_pages is None:
            store.every_pages = interval_for(self.states.state_bytes(), kv.pool.layout.page_bytes)
        self.runner = ModelRunner(model, kv.pool.layer_views(), backend, self.page_size,
                                  self.device, max_context=max_context, states=self.states)
        self.scheduler = Scheduler(config.prefill_chunk, config.max_batch_tokens)
        self.sampler = Sampler()
        self._req_ids = itertools.count(1)
        self.running: list[Request] = []  # admitted by add_request, in arrival order
        self._owners: dict[int, Request] = {}  # seq_id -> its running request

    def warm_up(self) -> None:
        """Compile and capture what a first decode step would (the batch-1 graph), so the
        first turn's first token does not wait for it."""
        if self.runner.graphs is not None:
            self.runner.graphs.capture((1,))

    # -- sequences -------------------------------------------------------------------------

    def new_sequence(self) -> Sequence:
        return Sequence(table=BlockTable(self.device))

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's hold on its pages (sealed pages stay cached)."""
        self.kv.release(seq.table.truncate(0))
        if self.states is not None:
            self.states.free(seq.seq_id)
        seq.hashes.clear()
        seq.num_computed = 0
        seq.last_logits = None

    def fork(self, seq: Sequence) -> Sequence:
        """A new sequence with the same tokens: full pages shared, the partial page copied."""
        child = Sequence(table=BlockTable(self.device), tokens=list(seq.tokens),
                         num_computed=seq.num_computed, hashes=list(seq.hashes))
        full = seq.num_computed // self.page_size
        shared = seq.pages[:full]
        self.kv.pin(shared)
        child.table.append(shared)
        if len(seq.pages) > full:
            page = self._alloc(1)
            self.kv.pool.copy_page(seq.pages[full], page[0])
            child.table.append(page)
        child.last_logits = None if seq.last_logits is None else seq.last_logits.clone()
        if self.states is not None:
            self.states.fork(seq.seq_id, child.seq_id)
        return child

    def truncate(self, seq: Sequence, n: int) -> None:
        """Rewind to the first n tokens; later pages are released, a shared boundary is copied."""
        assert 0 <= n <= len(seq.tokens), f"cannot truncate {len(seq.tokens)} tokens to {n}"
        if n == len(seq.tokens):
            return
        del seq.tokens[n:]
        if self.states is not None and n < seq.num_computed:
            self.release(seq)  # back to the nearest state snapshot at or before n
            self._reuse_prefix(seq)
            return
        self.kv.release(seq.table.truncate(-(-n // self.page_size)))
        del seq.hashes[n // self.page_size :]
        if n % self.page_size and seq.num_computed > n - n % self.page_size:
            self._copy_on_write(seq, n // self.page_size)
        seq.num_computed = min(seq.num_computed, n)
        seq.last_logits = None

    # -- extend ----------------------------------------------------------------------------

    def extend(self, seq: Sequence, ids: list[int],
               progress: Callable[[int, int], None] | None = None) -> ExtendResult:
        """Append ids and compute the KV of every pending token; keeps the last token's logits.

        `progress(done, total)` is called after each prefill chunk with the tokens computed."""
        start = time.perf_counter()
        result = self.restore(seq, ids)
        self._need_logits(seq)
        result.computed_tokens = seq.num_pending
        self._compute_pending([seq], progress)
        result.seconds = time.perf_counter() - start
        return result

    def restore(self, seq: Sequence, ids: list[int]) -> ExtendResult:
        """Append ids and bring back what the cache tiers hold of a fresh sequence (full pages
        and its saved tail), computing nothing: pending tokens are computed by the next
        `extend` or `generate` together with what comes after them, in the chunks the
        original process used (bf16 results depend on chunk boundaries)."""
        start = time.perf_counter()
        total = len(seq.tokens) + len(ids)
        if total > self.max_context:
            raise ContextTooLong(
                f"the context would be {total:,} tokens but this session may grow to "
                f"{self.max_context:,}; shorten the prompt, start a new session, or raise "
                "--max-context (within the model's window and --gpu-memory)")
        seq.tokens.extend(ids)
        pages, complete = self._reuse_prefix(seq)
        by_tier = {k: v * self.page_size for k, v in pages.items()}
        tail = self._restore_tail(seq) if complete else 0
        if tail:
            by_tier["disk"] = by_tier.get("disk", 0) + tail
        cached = sum(by_tier.values())
        took = time.perf_counter() - start
        return ExtendResult(len(ids), cached, by_tier, seq.num_pending, took, restore_seconds=took)

    def _reuse_prefix(self, seq: Sequence) -> tuple[dict[str, int], bool]:
        """A fresh sequence picks up its longest cached prefix of full pages from any tier;
        returns the pages served per tier and whether every full page came back."""
        if not self.kv.prefix_caching or seq.num_computed or len(seq.table):
            return {}, False
        if self.states is not None:  # hybrid: pages serve only up to a state snapshot
            return self._resume_hybrid(seq, len(seq.tokens)), False
        n_full = len(seq.tokens) // self.page_size
        hashes = self._chain(seq.tokens, n_full)
        got = self.kv.acquire(hashes)
        seq.table.append(got.pages)
        seq.hashes = hashes[: len(got.pages)]
        seq.num_computed = len(got.pages) * self.page_size
        return got.by_tier, len(got.pages) == n_full

    def _restore_tail(self, seq: Sequence) -> int:
        """After every full page came back: the saved partial page and last logits, if any."""
        tails = getattr(self.kv, "tails", None)
        if tails is None:
            return 0
        start = seq.num_computed
        prev = seq.hashes[-1] if seq.hashes else None
        tail = tails.find(prev, seq.tokens[start:])
        if tail is None:
            return 0
        n = tail.num_tokens
        if n:
            page = self._alloc(1)[0]
            self.kv.pool.data[page, :, :, :n].copy_(tail.kv)  # (L, 2, n, kv_heads, head_dim)
            seq.table.append([page])
            seq.num_computed += n
        if tail.logits is not None and seq.num_computed == len(seq.tokens):
            seq.last_logits = tail.logits.to(self.device)
        return n

    def save_tail(self, seq: Sequence) -> None:
        """Save the sequence's partial last page and last logits for a later process (see
        memory/tail_store.py); a no-op without a disk tier or with nothing to save."""
        tails = getattr(self.kv, "tails", None)
        n_full = seq.num_computed // self.page_size
        if tails is None or len(seq.hashes) < n_full:
            return
        n = seq.num_computed - n_full * self.page_size
        logits = seq.last_logits if seq.num_computed == len(seq.tokens) else None
        if n == 0 and logits is None:
            return
        kv = self.kv.pool.data[seq.pages[n_full], :, :, :n] if n else None
        prev = seq.hashes[n_full - 1] if n_full else None
        tails.save(prev, seq.tokens[n_full * self.page_size : seq.num_computed], kv, logits)

    def _snapshot_state(self, seq: Sequence) -> None:
        """Hybrid models: keep the linear states after a sealed page every k pages."""
        store = getattr(self.kv, "snapshots", None)
        n, p = seq.num_computed, self.page_size
        if (self.states is None or store is None or n % p or len(seq.hashes) < n // p
                or not store.wants(n // p)):
            return
        store.save(seq.hashes[n // p - 1], self.states.pool.snapshot(self.states.slot(seq.seq_id)))

    def _resume_hybrid(self, seq: Sequence, limit: int) -> dict[str, int]:
        """A fresh hybrid sequence takes the longest cached prefix of full pages (of at most
        `limit` tokens) that ends in a state snapshot; later pages would be recomputed anyway,
        their linear layers needing the state. Returns the pages served per tier."""
        store = getattr(self.kv, "snapshots", None)
        if store is None or self.states is None:
            return {}
        hashes = self._chain(seq.tokens, limit // self.page_size)
        got = self.kv.acquire(hashes)
        n, snap = len(got.pages), None
        while n and snap is None:
            snap = store.load(hashes[n - 1]) if store.wants(n) else None
            n -= snap is None
        self.kv.release(got.pages[n:])
        if not n:
            return {}
        seq.table.append(got.pages[:n])
        seq.hashes = hashes[:n]
        seq.num_computed = n * self.page_size
        self.states.pool.restore(self.states.slot(seq.seq_id), snap, seq.num_computed)
        return got.by_tier if n == len(got.pages) else {"snapshot": n}

    def _chain(self, tokens: list[int], n_pages: int, prev: bytes | None = None,
               first: int = 0) -> list[bytes]:
        out, p = [], self.page_size
        for i in range(first, n_pages):
            prev = self.kv.page_hash(prev, tokens[i * p : (i + 1) * p])
            out.append(prev)
        return out

    def _need_logits(self, seq: Sequence) -> None:
        """With nothing pending and no logits kept, recompute the last token (its page copied)."""
        if seq.num_pending or seq.last_logits is not None or not seq.tokens:
            return
        if self.states is not None:  # the state before the last token: from a snapshot
            self.release(seq)
            if self.kv.prefix_caching:
                self._resume_hybrid(seq, len(seq.tokens) - 1)
            return
        last = seq.num_computed - 1
        del seq.hashes[last // self.page_size :]
        self._copy_on_write(seq, last // self.page_size)
        seq.num_computed = last

    def _alloc(self, n: int) -> list[int]:
        try:
            return self.kv.alloc(n)
        except PagePoolExhausted as e:
            raise OutOfPages(f"{e}: the device KV pool is full; raise --gpu-memory, lower "
                             "--max-context, or start a new session") from e

    def _copy_on_write(self, seq: Sequence, index: int) -> None:
        old = seq.pages[index]
        new = self._alloc(1)[0]
        self.kv.pool.copy_page(old, new)
        seq.table.replace(index, new)
        self.kv.release([old])

    def _compute_pending(self, seqs: list[Sequence],
                         progress: Callable[[int, int], None] | None = None) -> None:
        total, done = sum(s.num_pending for s in seqs), 0
        while work := self.scheduler.schedule(seqs):
            self._run(work)
            done += sum(w.end - w.start for w in work)
            if progress is not None:
                progress(done, total)

    def _run(self, work: list[Work]) -> None:
        work = [w for w in work if self._fits(w)]
        if work:
            self._absorb(work, self.runner.run(work))

    def _absorb(self, work: list[Work], logits: torch.Tensor | None, row: int = 0) -> None:
        """After the forward: the work's KV is computed; keep logits rows from `row` on."""
        for w in work:
            w.seq.num_computed = w.end
            if w.want_logits:
                w.seq.last_logits = logits[row]
                row += 1
            self._seal_full_pages(w.seq)
            self._snapshot_state(w.seq)

    def _fits(self, w: Work) -> bool:
        """Allocate the pages `w` writes. Out of pages, a request's work is dropped and the
        request ends with the error; work of no request (an extend) raises it."""
        try:
            self._ensure_pages(w.seq, w.end)
            return True
        except OutOfPages as e:
            req = self._owners.get(w.seq.seq_id)
            if req is None:
                raise
            req.error, req.finish_reason = e, "error"
            return False

    def _ensure_pages(self, seq: Sequence, end: int) -> None:
        missing = -(-end // self.page_size) - len(seq.table)
        if missing > 0:
            seq.table.append(self._alloc(missing))

    def _seal_full_pages(self, seq: Sequence) -> None:
        if not self.kv.prefix_caching:
            return
        n_full = seq.num_computed // self.page_size
        prev = seq.hashes[-1] if seq.hashes else None
        for i, h in enumerate(self._chain(seq.tokens, n_full, prev, len(seq.hashes)),
                              start=len(seq.hashes)):
            page = self.kv.seal(seq.pages[i], h, seq.epoch - i * 1e-6)
            if page != seq.pages[i]:
                seq.table.replace(i, page)
            seq.hashes.append(h)

    # -- generate --------------------------------------------------------------------------

    def generate(self, seq: Sequence, params: SamplingParams) -> Iterator[StreamEvent]:
        """Stream tokens for one sequence; the last event carries the finish reason. Other
        running requests advance with it (their events wait in their outboxes)."""
        req = self.add_request(seq, params)
        try:
            while req.outbox or not req.finished:
                if not req.outbox:
                    self.step()
                events, req.outbox = req.outbox, []
                yield from events
            if req.error is not None:
                raise req.error
        finally:
            self.abort(req)

    def generate_batch(self, seqs: list[Sequence],
                       params: list[SamplingParams]) -> list[GenerationResult]:
        """Generate for several sequences at once: they share every step."""
        start = time.perf_counter()
        reqs = [self.add_request(s, p) for s, p in zip(seqs, params)]
        try:
            while not all(r.finished for r in reqs):
                self.step()
        finally:
            for r in reqs:
                self.abort(r)
        for r in reqs:
            if r.error is not None:
                raise r.error
        took = time.perf_counter() - start
        return [GenerationResult(r.generated, r.text, r.finish_reason or "stop", took)
                for r in reqs]

    def add_request(self, seq: Sequence, params: SamplingParams) -> Request:
        """Admit a generation for `seq`; its pending tokens are prefilled by later steps."""
        assert seq.tokens, "nothing to generate from: the sequence has no tokens"
        assert seq.seq_id not in self._owners, "the sequence is already being generated for"
        self._need_logits(seq)
        stops = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos
                                                     else self.stop_ids)
        req = Request(next(self._req_ids), seq, params, stops, self.max_context,
                      decoder=stream_decoder(self.tokenizer))
        self.sampler.start(req.req_id, params, self.device)
        self.running.append(req)
        self._owners[seq.seq_id] = req
        return req

    def abort(self, req: Request) -> None:
        """Stop a request (a no-op once finished); its sequence stays consistent: every
        token it holds has KV or is pending."""
        if req in self.running:
            self.running.remove(req)
            req.finish_reason = req.finish_reason or "aborted"
            self._close(req)

    @property
    def has_work(self) -> bool:
        return bool(self.running)

    def step(self) -> list[Request]:
        """One step over every running request: sample those whose logits are ready, give
        each a decode row and fill the rest of the token budget with prefill chunks (see
        Scheduler), run them as one forward, postprocess. Pipelined (`pipeline_decode`, on
        CUDA by default) the forward is queued before the host reads the tokens it
        consumes. Returns the requests that have new events in their outbox."""
        ready = [r for r in self.running if r.seq.num_pending == 0]
        prefilling = [r.seq for r in self.running if r.seq.num_pending > 0]
        if self._pipelined():
            self._step_pipelined(ready, prefilling)
        else:
            self._step_eager(ready, prefilling)
        touched = [r for r in self.running if r.outbox or r.finished]
        self._retire()
        return touched

    def _pipelined(self) -> bool:
        pipeline = self.config.pipeline_decode
        return self.device.type == "cuda" if pipeline is None else pipeline

    def _step_eager(self, ready: list[Request], prefilling: list[Sequence]) -> None:
        """sample -> postprocess -> run."""
        if ready:
            for r, t in zip(ready, self._sample(ready)):
                r.outbox.append(postprocess(r, t))
        decode = [Work(r.seq, r.seq.num_computed, len(r.seq.tokens), True)
                  for r in ready if not r.finished]
        self._run(decode + self.scheduler.schedule(prefilling, len(decode)))

    def _step_pipelined(self, ready: list[Request], prefilling: list[Sequence]) -> None:
        """Decode with the host one step behind the GPU.

        Tokens are sampled on the device; this step's forward is queued with them still on
        the device, and only then does the host wait for them (their copy finishes when the
        previous forward does), append them, check stops and advance constraints, while
        the forward runs. A row that ends on a stop token or string has had its forward run
        one step early: its KV and logits are kept (num_computed = len(tokens)), so nothing
        is wasted but one forward. Rows that end by length or context are known before and
        are not run.
        """
        tokens = self._sample_on_device(ready) if ready else None
        fetch = HostCopy(tokens) if tokens is not None else None
        decode: dict[int, Work] = {}
        for i, r in enumerate(ready):
            w = Work(r.seq, len(r.seq.tokens), len(r.seq.tokens) + 1, True)
            if may_continue(r) and self._fits(w):
                decode[i] = w
        prefill = [w for w in self.scheduler.schedule(prefilling, len(decode)) if self._fits(w)]
        logits = None
        if decode or prefill:
            ids = self._step_ids(tokens, list(decode), len(ready), prefill)
            logits = self.runner.run([*decode.values(), *prefill], ids=ids)
        for r, t in zip(ready, fetch.wait() if fetch else []):
            if r.error is None:
                r.outbox.append(postprocess(r, t))
        for row, i in enumerate(decode):  # its forward is queued: KV and logits of its token
            seq = ready[i].seq
            seq.num_computed = len(seq.tokens)
            seq.last_logits = logits[row]
            self._seal_full_pages(seq)
            self._snapshot_state(seq)
        self._absorb(prefill, logits, row=len(decode))

    def _step_ids(self, tokens: torch.Tensor | None, rows: list[int], n_ready: int,
                  prefill: list[Work]) -> torch.Tensor:
        """The step's input ids on the device: sampled tokens of the decode rows, then the
        prefill chunks' tokens from the host."""
        parts = []
        if rows:
            parts.append(tokens if len(rows) == n_ready else tokens[self.runner.to_device(rows)])
        if prefill:
            parts.append(self.runner.to_device(
                [t for w in prefill for t in w.seq.tokens[w.start : w.end]]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _sample(self, reqs: list[Request]) -> list[int]:
        logits = torch.stack([r.seq.last_logits for r in reqs])
        return self.sampler.sample(logits, [r.params for r in reqs], [r.req_id for r in reqs])

    def _sample_on_device(self, reqs: list[Request]) -> torch.Tensor:
        logits = torch.stack([r.seq.last_logits for r in reqs])
        return self.sampler.sample_on_device(logits, [r.params for r in reqs],
                                             [r.req_id for r in reqs])  # fmt: skip

    def _retire(self) -> None:
        done = [r for r in self.running if r.finished]
        if done:
            self.running = [r for r in self.running if not r.finished]
            for r in done:
                self._close(r)

    def _close(self, req: Request) -> None:
        self.sampler.finish(req.req_id)
        self.scheduler.forget(req.seq)
        self._owners.pop(req.seq.seq_id, None)
        if req.error is None:
            self.save_tail(req.seq)
