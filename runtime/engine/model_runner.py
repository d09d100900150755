"""Run the model over one step's work: build the batch tensors, forward, pick logits rows."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from runtime.engine.sequence import Sequence
from runtime.forward_context import ForwardContext
from runtime.kernels.backend import AttentionBackend, AttentionMetadata


@dataclass(slots=True)
class Work:
    """Compute KV for tokens `start:end` of `seq`; return logits of the last if asked."""

    seq: Sequence
    start: int
    end: int
    want_logits: bool


class ModelRunner:
    """Owns the model, the KV views and the attention backend; knows nothing of scheduling."""

    def __init__(self, model: nn.Module, kv_views, backend: AttentionBackend, page_size: int,
                 device: torch.device):
        self.model = model
        self.kv_views = kv_views
        self.backend = backend
        self.page_size = page_size
        self.device = device

    @torch.inference_mode()
    def run(self, work: list[Work]) -> torch.Tensor | None:
        """Forward all work items as one flattened batch; logits `(n_wanted, vocab)` float32."""
        ids, positions, meta = self._prepare(work)
        hidden = self.model(ids, positions, ForwardContext(self.backend, self.kv_views, meta))
        ends = itertools.accumulate(meta.query_lens_cpu)
        rows = [end - 1 for end, w in zip(ends, work) if w.want_logits]
        if not rows:
            return None
        return self.model.compute_logits(hidden[rows]).float()

    def _prepare(self, work: list[Work]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        tokens: list[int] = []
        for w in work:
            tokens += w.seq.tokens[w.start : w.end]
        ids = torch.tensor(tokens, dtype=torch.int64, device=self.device)
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
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=self.device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=self.device),
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


def prefer_transposed_linears(model: nn.Module) -> None:
    """On CPU in fp32, store each Linear weight as a transposed-contiguous view.

    oneDNN/MKL run `x @ W.T` with W laid out `(in, out)` about 1.4x faster at batch 1 (measured
    on the 2-core dev machine); the parameter keeps its `(out, in)` shape, so state dicts and
    every caller stay the same. One matrix is copied at a time, never the whole model.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
            w = module.weight.data
            if w.device.type == "cpu" and w.is_contiguous():
                module.weight.data = w.t().contiguous().t()


