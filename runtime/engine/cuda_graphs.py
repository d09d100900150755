"""Decode steps replayed from CUDA graphs: static inputs, one graph per batch-size bucket.

A decode step of a 7B model is ~1,400 small kernels; launched one by one from Python the CPU is
the bottleneck (~10 ms a step), replayed from a graph the GPU is. Each bucket (1, 2, 4, ... rows)
is captured once over static input buffers; a step of n <= bucket single-token rows copies its
inputs into those buffers and replays. Rows past n are padding: slot -1 (the store kernel skips
it) and 0 keys (the decode kernel reads no page for it), so nothing real is read or written.

The block-table buffer is as wide as the longest sequence can be (the model's context, capped
by the pool's pages), so the decode kernel's split count, derived from that width, never changes
after capture. The rope cos/sin cache is grown to the whole context before the first capture;
if anything regrows it later (its tensors are what the graphs read), the graphs are dropped and
captured again on next use.

Contract: after the first capture the model's parameters and the KV pool must stay the same
tensors (the graphs hold their addresses). Off CUDA (tests), "replay" re-runs the forward over
the same static buffers, which exercises every step of the path except the graph itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from runtime.forward_context import ForwardContext
from runtime.kernels.backend import AttentionBackend, AttentionMetadata
from runtime.kernels.layer_ops import LayerOps, layer_ops
from runtime.rope import RotaryEmbedding

if TYPE_CHECKING:
    from runtime.engine.model_runner import Work

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
# Backends whose decode path reads no tensor value on the host and launches a grid that depends
# only on static shapes (batch, block-table width); others run eagerly.
GRAPH_SAFE_BACKENDS: frozenset[str] = frozenset({"triton"})

_IDS, _POSITIONS, _SLOTS, _LENS = range(4)  # rows of the staging buffers
_PAD = (0, 0, -1, 0)  # token 0 at position 0, no slot, no keys


def graph_safe(backend: AttentionBackend) -> bool:
    """Whether `backend`'s store and decode can be captured in a CUDA graph."""
    return backend.name in GRAPH_SAFE_BACKENDS


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding n rows (buckets ascending), or None if none does."""
    for b in buckets:
        if b >= n:
            return b
    return None


@dataclass(frozen=True, slots=True)
class DecodeRows:
    """Host inputs of one decode step, one entry per row (sequence)."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    seq_lens: list[int]


def decode_rows(work: Sequence[Work], page_size: int, with_ids: bool = True) -> DecodeRows:
    """The token, position, KV slot and key count of each single-token work item.

    O(batch) host work: the slot comes from the sequence's host page list, never the device.
    Without ids (they are on the device, not yet in `seq.tokens`) the id entries are 0.
    """
    ids, positions, slots, lens = [], [], [], []
    for w in work:
        pos = w.start
        ids.append(w.seq.tokens[pos] if with_ids else 0)
        positions.append(pos)
        slots.append(w.seq.pages[pos // page_size] * page_size + pos % page_size)
        lens.append(w.end)
    return DecodeRows(ids, positions, slots, lens)


class _Bucket:
    """One bucket's forward over the static buffers and its captured graph (None off CUDA)."""

    def __init__(
        self,
        forward: Callable[[], torch.Tensor],
        graph: torch.cuda.CUDAGraph | None,
        logits: torch.Tensor,
    ):
        self.forward = forward
        self.graph = graph
        self.logits = logits  # (bucket, vocab) float32, rewritten by every replay

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.logits.copy_(self.forward())


class DecodeGraphs:
    """CUDA graphs of the decode forward (ids -> logits), captured lazily per bucket.

    `accepts(work)` says whether a step can replay: every item one new token, the batch within
    the largest bucket, every sequence inside the captured context. `run(work)` stages the
    inputs (one host-to-device copy from pinned memory, one batched block-table copy), replays
    and returns logits `(n, vocab)` float32 of every row: a view of the graph's output, valid
    until the next `run` or `capture`. Not thread-safe: the engine's thread only.
    """

    def __init__(
        self,
        model: nn.Module,
        kv_views: list[tuple[torch.Tensor, torch.Tensor]],
        backend: AttentionBackend,
        page_size: int,
        device: torch.device,
        *,
        max_context: int,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        ops: LayerOps | None = None,
    ):
        assert list(buckets) == sorted(set(buckets)) and buckets[0] >= 1, "buckets ascending"
        self.model = model
        self.kv_views = kv_views
        self.backend = backend
        self.page_size = page_size
        self.device = _with_index(torch.device(device))
        self.ops = ops or layer_ops(self.device)
        self.max_context = max_context
        self.buckets = tuple(buckets)
        num_pages = kv_views[0][0].shape[0]
        self.width = min(-(-max_context // page_size), num_pages)  # block-table columns
        self.rotary = _find_rotary(model)
        self.replays = 0
        self.captures = 0
        cuda = self.device.type == "cuda"
        rows = self.buckets[-1]
        self._host = torch.zeros((4, rows), dtype=torch.int64, pin_memory=cuda)
        self._host_np: np.ndarray = self._host.numpy()
        self._staged = torch.zeros((4, rows), dtype=torch.int64, device=self.device)
        self._seq_lens = torch.zeros(rows, dtype=torch.int32, device=self.device)
        self._tables = torch.zeros((rows, self.width), dtype=torch.int32, device=self.device)
        self._starts = torch.arange(rows + 1, dtype=torch.int32, device=self.device)
        self._copied: torch.cuda.Event | None = None  # the last staging copy out of _host
        self._pool = torch.cuda.graph_pool_handle() if cuda else None
        self._buckets: dict[int, _Bucket] = {}
        self._rope: torch.Tensor | None = None  # the cos cache the graphs read

    # -- deciding -------------------------------------------------------------------------------

    def accepts(self, work: Sequence[Work]) -> bool:
        """True if this step can replay a graph (see the class doc)."""
        if not work or len(work) > self.buckets[-1]:
            return False
        for w in work:
            if w.end - w.start != 1 or w.end > self.max_context or len(w.seq.pages) > self.width:
                return False
        return True

    # -- running --------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, work: Sequence[Work], ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replay the decode step for `work` (accepted); logits `(n, vocab)` float32 (a view).

        `ids` `(n,)` on the device replaces the host token ids (a pipelined step)."""
        n = len(work)
        size = bucket_for(n, self.buckets)
        assert size is not None, "run() needs a batch that accepts() took"
        self._check_rope()
        bucket = self._buckets.get(size) or self._capture(size)
        self._stage(work, ids)
        bucket.replay()
        self.replays += 1
        return bucket.logits[:n]

    def capture(self, buckets: Sequence[int] | None = None) -> None:
        """Capture the given buckets (default: all) now, largest first so they share memory."""
        with torch.inference_mode():
            self._check_rope()
            for size in sorted(buckets or self.buckets, reverse=True):
                if size not in self._buckets:
                    self._capture(size)

    def reset(self) -> None:
        """Drop every graph (captured again on next use)."""
        self._buckets.clear()
        self._rope = None

    def _stage(self, work: Sequence[Work], ids: torch.Tensor | None = None) -> None:
        """Write the step's inputs into the static buffers, padding every row past n."""
        rows = decode_rows(work, self.page_size, with_ids=ids is None)
        n = len(work)
        h = self._writable_host()
        for r, values in (
            (_IDS, rows.ids),
            (_POSITIONS, rows.positions),
            (_SLOTS, rows.slots),
            (_LENS, rows.seq_lens),
        ):
            h[r, :n] = values
            h[r, n:] = _PAD[r]
        self._upload()
        if ids is not None:  # device to device, queued behind the sampling that made them
            self._staged[_IDS, :n].copy_(ids)
        # One batched launch for every row's table; columns past a row's pages keep stale ids
        # that the kernels never read (they stop at the row's key count).
        torch._foreach_copy_(
            [self._tables[b, : len(w.seq.pages)] for b, w in enumerate(work)],
            [w.seq.table.tensor for w in work],
        )

    def _pad_all(self) -> None:
        h = self._writable_host()
        for r, value in enumerate(_PAD):
            h[r, :] = value
        self._upload()

    def _writable_host(self) -> np.ndarray:
        """The pinned staging rows, once the copy that last read them has finished."""
        if self._copied is not None:
            self._copied.synchronize()
        return self._host_np

    def _upload(self) -> None:
        """All staging rows to the device in one copy (a few hundred bytes; no host sync)."""
        self._staged.copy_(self._host, non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        self._seq_lens.copy_(self._staged[_LENS])  # int64 -> int32, as the kernels take

    # -- capturing ------------------------------------------------------------------------------

    def _check_rope(self) -> None:
        """Grow the rope cache to the whole context; drop the graphs if it was regrown."""
        if self.rotary is None:
            return
        if self._rope is not None and self.rotary.cos is self._rope:
            return
        self.reset()
        self.rotary.ensure(self.max_context, self.device)
        self._rope = self.rotary.cos

    def _forward(self, size: int) -> torch.Tensor:
        """The decode forward of `size` rows over the static buffers; logits float32."""
        meta = AttentionMetadata(
            slot_mapping=self._staged[_SLOTS, :size],
            block_tables=self._tables[:size],
            seq_lens=self._seq_lens[:size],
            query_start_loc=self._starts[: size + 1],
            page_size=self.page_size,
            max_query_len=1,
            # A host bound, not the real lengths (they live on the device): rope sizing only.
            max_seq_len=self.max_context,
            seq_lens_cpu=[self.max_context] * size,
            query_lens_cpu=[1] * size,
        )
        ctx = ForwardContext(self.backend, self.kv_views, meta, self.ops)
        hidden = self.model(self._staged[_IDS, :size], self._staged[_POSITIONS, :size], ctx)
        return self.model.compute_logits(hidden, self.ops).float()  # (size, vocab)

    def _capture(self, size: int) -> _Bucket:
        self._pad_all()  # warm-up and capture see only padding: no KV is read or written
        forward = functools.partial(self._forward, size)
        if self.device.type != "cuda":
            bucket = _Bucket(forward, None, forward())
        else:
            bucket = self._capture_cuda(forward)
        self._buckets[size] = bucket
        self.captures += 1
        return bucket

    def _capture_cuda(self, forward: Callable[[], torch.Tensor]) -> _Bucket:
        current = torch.cuda.current_stream(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            forward()  # compiles the Triton kernels, initialises cuBLAS for these shapes
        graph = torch.cuda.CUDAGraph()
        # thread_local: the write-through worker may sync on events while we capture.
        with torch.cuda.graph(
            graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"
        ):
            logits = forward()
        current.wait_stream(stream)
        return _Bucket(forward, graph, logits)


def _find_rotary(model: nn.Module) -> RotaryEmbedding | None:
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            return module
    return None


def _with_index(device: torch.device) -> torch.device:
    """cuda -> cuda:N (the rope cache compares devices; "cuda" != "cuda:0")."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
