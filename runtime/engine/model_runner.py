"""Run the model over one step's work: build the batch tensors, forward, pick logits rows."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from runtime.engine.cuda_graphs import DEFAULT_BUCKETS, DecodeGraphs, graph_safe
from runtime.engine.sequence import Sequence
from runtime.forward_context import ForwardContext
from runtime.kernels.backend import AttentionBackend, AttentionMetadata
from runtime.kernels.layer_ops import LayerOps, layer_ops
from runtime.models.recurrent_state import SequenceStates


@dataclass(slots=True)
class Work:
    """Compute KV for tokens `start:end` of `seq`; return logits of the last if asked."""

    seq: Sequence
    start: int
    end: int
    want_logits: bool


class ModelRunner:
    """Owns the model, the KV views and the attention backend; knows nothing of scheduling.

    On CUDA with a graph-safe backend, decode steps (every item one new token, the batch within
    the largest bucket) replay CUDA graphs (`graphs`, see cuda_graphs.py); everything else runs
    eagerly. `cuda_graphs=False` (or `graphs = None`) forces eager; `max_context` bounds the
    positions the graphs serve (default: the model config's max_position_embeddings). `ops`:
    the layer ops (default: those of the device); `set_ops_options` switches them for A/B runs.
    """

    def __init__(self, model: nn.Module, kv_views, backend: AttentionBackend, page_size: int,
                 device: torch.device, *, cuda_graphs: bool | None = None,
                 max_context: int | None = None,
                 graph_buckets: tuple[int, ...] = DEFAULT_BUCKETS, ops: LayerOps | None = None,
                 states: SequenceStates | None = None):
        self.model = model
        self.kv_views = kv_views
        self.backend = backend
        self.page_size = page_size
        self.device = torch.device(device)
        self.ops = ops or layer_ops(self.device)
        if max_context is None:
            max_context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.states = states  # hybrid models: the linear layers' states (no graphs yet)
        if cuda_graphs is None:
            cuda_graphs = (self.device.type == "cuda" and graph_safe(backend) and states is None
                           and getattr(model, "graph_safe", True))  # DeepSeek-V4: host loops
        self.graphs: DecodeGraphs | None = None
        if cuda_graphs and max_context:
            self.graphs = DecodeGraphs(model, kv_views, backend, page_size, self.device,
                                       max_context=max_context, buckets=graph_buckets,
                                       ops=self.ops)

    def set_ops_options(self, **changes: bool) -> None:
        """Switch layer-ops options (`decode_gemv`, `pdl`) for later forwards; captured graphs
        are dropped so the next decode captures with them."""
        self.ops = self.ops.with_options(**changes)
        if hasattr(self.backend, "pdl"):  # the attention kernels launch with the same option
            self.backend.pdl = self.ops.options.pdl
        if self.graphs is not None:
            self.graphs.ops = self.ops
            self.graphs.reset()

    @torch.inference_mode()
    def run(self, work: list[Work], ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """Forward all work items as one flattened batch; logits `(n_wanted, vocab)` float32.

        `ids`: the tokens of the work, already on the device (a pipelined decode step whose
        tokens were sampled there and are not yet in the sequences' host lists); by default
        they are read from `seq.tokens`."""
        if self.graphs is not None and self.graphs.accepts(work):
            return self._wanted(self.graphs.run(work, ids), work)
        host_ids, positions, meta = self._prepare(work, with_ids=ids is None)
        states = None if self.states is None else self.states.bind(
            [w.seq.seq_id for w in work], meta)
        hidden = self.model(host_ids if ids is None else ids, positions,
                            ForwardContext(self.backend, self.kv_views, meta, self.ops, states))
        ends = itertools.accumulate(meta.query_lens_cpu)
        rows = [end - 1 for end, w in zip(ends, work) if w.want_logits]
        if not rows:
            return None
        wanted = hidden.index_select(0, self.to_device(rows))
        return self.model.compute_logits(wanted, self.ops).float()

    def _wanted(self, logits: torch.Tensor, work: list[Work]) -> torch.Tensor | None:
        """Copies of the wanted rows of a graph's output (which the next replay overwrites)."""
        rows = [i for i, w in enumerate(work) if w.want_logits]
        if not rows:
            return None
        if len(rows) == len(work):
            return logits.clone()
        return logits.index_select(0, self.to_device(rows))

    def to_device(self, values: list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """A host list on the device without making the host wait for the GPU.

        A copy from pageable memory synchronises the stream, so every chunk's prepare would
        wait for the previous chunk's forward to finish; pinned memory copies asynchronously.
        """
        t = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _prepare(self, work: list[Work], with_ids: bool = True
                 ) -> tuple[torch.Tensor | None, torch.Tensor, AttentionMetadata]:
        ids = None
        if with_ids:
            tokens: list[int] = []
            for w in work:
                tokens += w.seq.tokens[w.start : w.end]
            ids = self.to_device(tokens)
        positions = torch.cat([torch.arange(w.start, w.end, device=self.device) for w in work])
        slots = torch.cat([self._slots(w, positions_of) for w, positions_of in
                           zip(work, torch.split(positions, [w.end - w.start for w in work]))])
        query_lens = [w.end - w.start for w in work]
        seq_lens = [w.end for w in work]
        starts = [0]
        for n in query_lens:
            starts.append(starts[-1] + n)
        meta = AttentionMetadata(
            slot_mapping=slots,
            block_tables=self._block_tables(work),
            seq_lens=self.to_device(seq_lens, torch.int32),
            query_start_loc=self.to_device(starts, torch.int32),
            page_size=self.page_size,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            seq_lens_cpu=seq_lens,
            query_lens_cpu=query_lens,
        )
        return ids, positions, meta

    def _slots(self, w: Work, pos: torch.Tensor) -> torch.Tensor:
        table = w.seq.table.tensor
        return table[pos // self.page_size].long() * self.page_size + pos % self.page_size

    def _block_tables(self, work: list[Work]) -> torch.Tensor:
        if len(work) == 1:
            return work[0].seq.table.tensor.unsqueeze(0)
        width = max(len(w.seq.table) for w in work)
        out = torch.zeros((len(work), width), dtype=torch.int32, device=self.device)
        for b, w in enumerate(work):
            out[b, : len(w.seq.table)] = w.seq.table.tensor
        return out
