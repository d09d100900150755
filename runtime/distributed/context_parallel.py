"""Context-parallel prefill: a long first turn's tokens split across the ranks.

Tensor parallel splits every token's work by heads; a fresh sequence whose prefill reaches
`cp_min` tokens (CP_MIN_TOKENS by default) is instead split by *tokens*: with 2N chunks,
rank r computes chunks r and 2N-1-r (zigzag, so causal attention costs every rank the same),
with each layer's weights gathered from the ranks' shards for the layer's time only (memory
stays that of tensor parallel). Each layer's K/V are all-gathered (1/7 of the bytes a
tensor-parallel all-reduce of the hidden states moves, at Qwen2.5-7B's GQA), every rank
stores its own heads of all of them into its pages (the tensor-parallel layout, so decode
follows unchanged), and each chunk attends to the keys before it and, causally, to its own,
the two merged by their log-sum-exp (lse_attention.py). Equal to the chunked prefill up to
summation order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.distributed.group import RankGroup
from runtime.distributed.lse_attention import attention_lse, merge
from runtime.engine.model_runner import ModelRunner, Work
from runtime.engine.scheduler import Scheduler
from runtime.engine.sequence import Sequence
from runtime.kernels.backend import AttentionMetadata

log = logging.getLogger(__name__)

# Prefill tokens from which a fresh sequence is computed context-parallel. A first estimate
# (below it one chunked prefill is short anyway); bench/cp_prefill.py measures the crossover.
CP_MIN_TOKENS = 32_768


def zigzag_spans(total: int, world: int, rank: int) -> list[tuple[int, int]]:
    """Rank `rank`'s two token spans `[start, end)` of `total` cut into 2*world chunks."""
    bounds = [total * i // (2 * world) for i in range(2 * world + 1)]
    far = 2 * world - 1 - rank
    return [(bounds[rank], bounds[rank + 1]), (bounds[far], bounds[far + 1])]


class ParallelScheduler(Scheduler):
    """The engine's scheduler, except that a fresh sequence with at least `cp_min` pending
    tokens is prefilled as one context-parallel work item when no decode row shares the step
    and its activations fit every rank (`fits`, agreed by all; `cp_min` 0: never)."""

    def __init__(self, chunk: int, max_batch_tokens: int, cp_min: int,
                 fits: Callable[[int], bool]):
        super().__init__(chunk, max_batch_tokens)
        self.cp_min = cp_min
        self.fits = fits

    def schedule(self, seqs: list[Sequence], decode_rows: int = 0) -> list[Work]:
        if self.cp_min and not decode_rows:
            for seq in seqs:
                if (seq.num_computed == 0 and seq.num_pending >= self.cp_min
                        and self.fits(len(seq.tokens))):
                    self._tick += 1
                    self._served[seq.seq_id] = self._tick
                    return [Work(seq, 0, len(seq.tokens), want_logits=True)]
        return super().schedule(seqs, decode_rows)


class GatherOrder(NamedTuple):
    """Row `src[p]` of the gathered rows holds position p; each rank sent `rows` rows."""

    src: Tensor
    rows: int


class ContextParallelRunner:
    """The rank's ModelRunner, with context-parallel work (see ParallelScheduler) run here."""

    def __init__(self, inner: ModelRunner, group: RankGroup, cp_min: int, chunk: int):
        self.inner = inner
        self.group = group
        self.cp_min = cp_min
        self.chunk = chunk  # tokens per feed-forward block (bounds the activations)
        self.prefills = 0  # context-parallel prefills run (for tests and benchmarks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def graphs(self) -> Any:
        return self.inner.graphs

    @graphs.setter
    def graphs(self, value: Any) -> None:  # benchmarks switch graphs off and on
        self.inner.graphs = value

    def fits(self, tokens: int) -> bool:
        """Whether a context-parallel prefill of `tokens` fits every rank's free device
        memory (the same answer on every rank); the CPU's memory is not planned."""
        if self.inner.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(self.inner.device)
        free += torch.cuda.memory_reserved(self.inner.device) - torch.cuda.memory_allocated(
            self.inner.device)
        need = activation_bytes(self.inner.model.config, tokens, self.group.world, self.chunk)
        (ok,) = self.group.agree_min([int(need <= free)])
        if not ok:
            log.info("a %d-token prefill needs ~%.1f GB for context parallel; chunked instead",
                     tokens, need / 1e9)
        return bool(ok)

    def run(self, work: list[Work], ids: Tensor | None = None) -> Tensor | None:
        if (self.cp_min and len(work) == 1 and work[0].start == 0
                and work[0].end >= max(self.cp_min, 2 * self.group.world)):
            return self.prefill(work[0])
        return self.inner.run(work, ids)

    @torch.inference_mode()
    def prefill(self, w: Work) -> Tensor:
        """Compute `w` (a whole fresh sequence) context-parallel; its last token's logits."""
        runner, group = self.inner, self.group
        self.prefills += 1
        body = runner.model.model
        spans = zigzag_spans(w.end, group.world, group.rank)
        positions = torch.cat([torch.arange(s, e, device=runner.device) for s, e in spans])
        ids = runner.to_device([t for s, e in spans for t in w.seq.tokens[s:e]])
        _, _, meta = runner._prepare([w], with_ids=False)  # every token's slot, for the store
        order = gather_order(w.end, group.world, runner.device)
        ops = runner.ops.inner  # no collectives: this forward makes its own
        x = body.embed_tokens(ids)  # (t, hidden)
        cos, sin = body.rotary(positions, w.end)
        residual = None
        for layer in body.layers:
            h, residual = ops.add_norm(x, residual, layer.input_layernorm)
            h = self._attention(layer.self_attn, h, cos, sin, meta, order, spans, ops)
            h, residual = ops.add_norm(h, residual, layer.post_attention_layernorm)
            x = self._mlp(layer.mlp, h)
        hidden = ops.add_norm(x, residual, body.norm)[0]
        last = group.broadcast(hidden[-1:].contiguous(), src=0)  # rank 0 holds the last chunk
        return runner.model.compute_logits(last, runner.ops).float()

    def _attention(self, attn, h: Tensor, cos: Tensor, sin: Tensor, meta: AttentionMetadata,
                   order: GatherOrder, spans: list[tuple[int, int]], ops) -> Tensor:
        t, d, n = h.shape[0], attn.head_dim, self.group.world
        hq, hkv = attn.num_heads, attn.num_kv_heads  # this rank's shares
        qkv = attn.qkv_proj
        assert qkv is not None, "context parallel serves fused q/k/v projections"
        bias = None if qkv.bias is None else self.group.all_gather_cat(qkv.bias, 0)
        y = F.linear(h, self.group.all_gather_cat(qkv.weight, 0), bias)
        y = y.view(t, n, hq + 2 * hkv, d)  # rank-major heads: the one-GPU head order
        q = y[:, :, :hq].reshape(t, n * hq, d)
        k = y[:, :, hq : hq + hkv].reshape(t, n * hkv, d)
        v = y[:, :, hq + hkv :].reshape(t, n * hkv, d)
        if attn.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)
        k_all, v_all = self._gather_tokens(k, order), self._gather_tokens(v, order)
        mine = slice(self.group.rank * hkv, (self.group.rank + 1) * hkv)
        k_cache, v_cache = self.inner.kv_views[attn.layer_idx]
        self.inner.backend.store_kv(k_cache, v_cache, k_all[:, mine].contiguous(),
                                    v_all[:, mine].contiguous(), meta)
        out, row = [], 0
        for s, e in spans:
            out.append(_span_attention(q[row : row + e - s], k_all, v_all, s, e, attn.scale))
            row += e - s
        o_w = self.group.all_gather_cat(attn.o_proj.weight, 1)
        o = F.linear(torch.cat(out).reshape(t, n * hq * d), o_w)
        return o if attn.o_proj.row_bias is None else o + attn.o_proj.row_bias

    def _gather_tokens(self, x: Tensor, order: GatherOrder) -> Tensor:
        """Every rank's rows of `x` `(t, H, D)`, in position order `(total, H, D)`."""
        gathered = self.group.all_gather_padded(x, order.rows)  # (world, rows, H, D)
        return gathered.reshape(-1, *x.shape[1:])[order.src]

    def _mlp(self, mlp, h: Tensor) -> Tensor:
        gate_up = mlp.gate_up_proj
        assert gate_up is not None, "context parallel serves fused gate/up projections"
        n = self.group.world
        w = self.group.all_gather_cat(gate_up.weight, 0)  # rows: [gate_r | up_r] per rank
        down = self.group.all_gather_cat(mlp.down_proj.weight, 1)
        cols = gate_up.weight.shape[0] // 2
        out = torch.empty_like(h)
        for s in range(0, h.shape[0], self.chunk):
            y = F.linear(h[s : s + self.chunk], w).view(-1, n, 2, cols)
            gate, up = y[:, :, 0].reshape(y.shape[0], -1), y[:, :, 1].reshape(y.shape[0], -1)
            out[s : s + self.chunk] = F.linear(F.silu(gate) * up, down)
        bias = mlp.down_proj.row_bias
        return out if bias is None else out + bias


def activation_bytes(cfg: Any, tokens: int, world: int, chunk: int, size: int = 2) -> int:
    """An upper estimate of one rank's transient memory in a context-parallel prefill of
    `tokens` (bf16): its tokens' hidden-sized tensors and q/k/v, every token's gathered K/V
    (padded and ordered), a feed-forward block, one layer's gathered weights; plus a fifth."""
    t = tokens // world + 2
    h, d = cfg.hidden_size, cfg.head_dim
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
    kv = 2 * 2 * (tokens + 2 * world) * cfg.num_kv_heads * d
    ffn = min(chunk, t) * 3 * cfg.intermediate_size
    weights = h * (qkv + cfg.num_heads * d + 3 * cfg.intermediate_size)
    return int(1.2 * size * (t * (8 * h + 2 * qkv) + kv + ffn + weights))


def _span_attention(q: Tensor, k: Tensor, v: Tensor, start: int, end: int, scale: float
                    ) -> Tensor:
    """Queries at positions `[start, end)` over the keys `[0, end)`: the span's own block
    causally, the keys before it in full, merged by log-sum-exp."""
    out, lse = attention_lse(q, k[start:end], v[start:end], scale, causal=True)
    if start:
        before, lse_before = attention_lse(q, k[:start], v[:start], scale, causal=False)
        out, lse = merge(out, lse, before, lse_before)
    return out


def gather_order(total: int, world: int, device: torch.device) -> GatherOrder:
    """Where each position's row lies in the all-gathered, padded `(world * rows)` rows."""
    per_rank = [zigzag_spans(total, world, r) for r in range(world)]
    rows = max(sum(e - s for s, e in spans) for spans in per_rank)
    src = torch.empty(total, dtype=torch.int64)
    for r, spans in enumerate(per_rank):
        j = r * rows
        for s, e in spans:
            src[s:e] = torch.arange(j, j + e - s)
            j += e - s
    return GatherOrder(src.to(device), rows)
