"""DeepSeek-V4's attention block: shared-KV multi-query attention over a sliding window of
recent tokens plus compressed entries of closed windows (CSA: overlapping windows at stride
`csa_rate` with the lightning indexer's top-k; HCA: windows of `hca_rate`, all attended),
learned sinks, partial interleaved rope on the trailing dims (undone on the output), and a
grouped low-rank output projection.

Every cache kind is a field of the layer's per-token row in the KV pages
(compressed_rows.py): a forward writes its tokens' rows, pools each window its tokens close
into an entry (and an indexer key) at the window's last token, then attends. The math is in
runtime/kernels/torch_compressed.py. Parameter names equal transformers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.config_deepseek import CSA, SLIDING_ONLY
from runtime.forward_context import ForwardContext
from runtime.kernels.torch_compressed import (
    indexer_select,
    pool_windows,
    rope_tail,
    sink_attention,
    visible_entries,
)
from runtime.kernels.torch_ref import gather_kv
from runtime.models.compressed_rows import RowFields, row_fields
from runtime.models.llama import RMSNorm
from runtime.rope import RotaryEmbedding


class UnweightedRMSNorm(nn.Module):
    """`x * rsqrt(mean(x^2) + eps)`, the statistic in fp32, the product in x's dtype."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + self.eps).to(x.dtype)


@dataclass
class Ropes:
    """The two rotary tables of a forward: `main` (sliding layers) and `compress`."""

    main: RotaryEmbedding
    compress: RotaryEmbedding
    max_len: int

    def at(self, kind: str, positions: Tensor) -> tuple[Tensor, Tensor]:
        table = self.main if kind == "main" else self.compress
        return table(positions, self.max_len)


class Indexer(nn.Module):
    """The lightning indexer's compressor (overlapping, index_head_dim) and query heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v4 = cfg.v4
        assert v4 is not None
        di, h = v4.index_head_dim, cfg.hidden_size
        self.kv_proj = nn.Linear(h, 2 * di, bias=False)
        self.gate_proj = nn.Linear(h, 2 * di, bias=False)
        self.position_bias = nn.Parameter(torch.empty(v4.csa_rate, 2 * di))
        self.kv_norm = RMSNorm(di, cfg.rms_norm_eps, weight_in_fp32=True)
        self.q_b_proj = nn.Linear(v4.q_lora_rank, v4.index_n_heads * di, bias=False)
        self.scorer = nn.Module()
        self.scorer.weights_proj = nn.Linear(h, v4.index_n_heads, bias=False)


class Compressor(nn.Module):
    """One entry per `rate` tokens: kv and gate projections, a position bias per slot."""

    def __init__(self, cfg: ModelConfig, rate: int, overlap: bool):
        super().__init__()
        width = (2 if overlap else 1) * cfg.head_dim
        self.rate, self.overlap = rate, overlap
        self.kv_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.gate_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.position_bias = nn.Parameter(torch.empty(rate, width))
        self.kv_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, weight_in_fp32=True)
        self.indexer = Indexer(cfg) if overlap else None


def fp32_linear(x: Tensor, linear: nn.Linear) -> Tensor:
    """A projection whose weights stay in fp32 whatever the model's dtype (the compressors'
    and the indexer's, as transformers keeps them): the input is cast to them, and plain torch
    computes it (the device's layer ops are tuned for the model's dtype)."""
    return linear(x.to(linear.weight.dtype))


def token_rows(cache: Tensor, table: Tensor, tokens: Tensor, page_size: int) -> Tensor:
    """The rows `(n, width)` of one sequence's `tokens` (n,), read through its block table."""
    return cache[table[tokens // page_size].long(), tokens % page_size, 0]


class CompressedAttention(nn.Module):
    """The V4 attention of one layer (see the module doc)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        v4 = cfg.v4
        assert v4 is not None, "CompressedAttention needs cfg.v4"
        self.layer_idx, self.v4, self.num_heads, self.d = layer_idx, v4, cfg.num_heads, cfg.head_dim
        self.kind = v4.layer_kinds[layer_idx]
        self.rope_kind = "main" if self.kind == SLIDING_ONLY else "compress"
        self.fields: RowFields = row_fields(cfg, layer_idx)
        self.scale = cfg.head_dim**-0.5
        h, eps, hd = cfg.hidden_size, cfg.rms_norm_eps, cfg.num_heads * cfg.head_dim
        self.q_a_proj = nn.Linear(h, v4.q_lora_rank, bias=False)
        self.q_a_norm = RMSNorm(v4.q_lora_rank, eps, weight_in_fp32=True)
        self.q_b_proj = nn.Linear(v4.q_lora_rank, hd, bias=False)
        self.q_b_norm = UnweightedRMSNorm(eps)
        self.kv_proj = nn.Linear(h, cfg.head_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.head_dim, eps, weight_in_fp32=True)
        self.o_a_proj = nn.Linear(hd // v4.o_groups, v4.o_groups * v4.o_lora_rank, bias=False)
        self.o_b_proj = nn.Linear(v4.o_groups * v4.o_lora_rank, h, bias=False)
        self.sinks = nn.Parameter(torch.empty(cfg.num_heads))
        self.compressor: Compressor | None = None
        if self.kind != SLIDING_ONLY:
            self.compressor = Compressor(cfg, v4.rate_of(layer_idx), overlap=self.kind == CSA)

    def forward(self, x: Tensor, positions: Tensor, ropes: Ropes, ctx: ForwardContext) -> Tensor:
        t = x.shape[0]
        cos, sin = ropes.at(self.rope_kind, positions)
        q_res = self.q_a_norm(ctx.ops.linear(x, self.q_a_proj))  # (T, q_lora)
        q = self.q_b_norm(ctx.ops.linear(q_res, self.q_b_proj).view(t, self.num_heads, self.d))
        q = rope_tail(q, cos, sin)  # (T, H, D)
        kv = rope_tail(self.kv_norm(ctx.ops.linear(x, self.kv_proj)), cos, sin)  # (T, D)
        cache = ctx.kv[self.layer_idx][0]
        self._store(cache, x, kv, ctx)
        if self.compressor is not None:
            self._close_windows(cache, ropes, ctx)
        if ctx.backend.name == "triton":
            out = self._attend_triton(q, cache, x, q_res, ropes, positions, ctx)
        else:
            out = self._attend_torch(q, cache, x, q_res, ropes, positions, ctx)
        out = rope_tail(out, cos, -sin)  # the output's rope slice back to position zero
        return ctx.ops.linear(self._grouped(out.reshape(t, -1)), self.o_b_proj)

    def _grouped(self, x: Tensor) -> Tensor:
        """Block-diagonal o_a_proj: group g of the heads' outputs through its own block."""
        g = self.v4.o_groups
        w = self.o_a_proj.weight.view(g, -1, x.shape[1] // g)  # (G, o_lora, in / G)
        y = torch.bmm(x.view(x.shape[0], g, -1).transpose(0, 1), w.transpose(1, 2))
        return y.transpose(0, 1).reshape(x.shape[0], -1)  # (T, G * o_lora)

    def _store(self, cache: Tensor, x: Tensor, kv: Tensor, ctx: ForwardContext) -> None:
        """Write the new tokens' per-token fields (the entry fields follow per window)."""
        meta, f = ctx.meta, self.fields
        pages, offsets = meta.slot_mapping // meta.page_size, meta.slot_mapping % meta.page_size
        values = [(f.kv, kv)]
        comp = self.compressor
        if comp is not None:
            values += [(f.comp_kv, fp32_linear(x, comp.kv_proj)),
                       (f.comp_gate, fp32_linear(x, comp.gate_proj))]
            if comp.indexer is not None:
                values += [(f.idx_kv, fp32_linear(x, comp.indexer.kv_proj)),
                           (f.idx_gate, fp32_linear(x, comp.indexer.gate_proj))]
        for field, value in values:
            cache[pages, offsets, 0, field] = value.to(cache.dtype)

    def _close_windows(self, cache: Tensor, ropes: Ropes, ctx: ForwardContext) -> None:
        """Pool every window this forward's tokens close, reading only the tokens it needs;
        write its entry (and indexer key) into the row of the window's last token."""
        comp, f, meta = self.compressor, self.fields, ctx.meta
        assert comp is not None
        rate, page = comp.rate, meta.page_size
        for b, (q_len, end) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            first, stop = (end - q_len) // rate, end // rate
            if first == stop:
                continue
            table, origin = meta.block_tables[b], max(0, (first - 1) * rate)
            device = cache.device
            rows = token_rows(cache, table, torch.arange(origin, stop * rate, device=device),
                              page)
            windows = torch.arange(first, stop, device=device)
            cos, sin = ropes.at("compress", windows * rate)
            last = (windows + 1) * rate - 1
            parts = [(f.entry, comp.kv_norm, f.comp_kv, f.comp_gate, comp.position_bias)]
            if comp.indexer is not None:
                ix = comp.indexer
                parts.append((f.idx_key, ix.kv_norm, f.idx_kv, f.idx_gate, ix.position_bias))
            pages, offsets = table[last // page].long(), last % page
            for field, norm, kv_f, gate_f, bias in parts:
                pooled = pool_windows(rows[:, kv_f], rows[:, gate_f], bias.float(), windows,
                                      rate, comp.overlap, origin)
                entry = rope_tail(norm(pooled)[:, None], cos, sin)[:, 0]
                cache[pages, offsets, 0, field] = entry.to(cache.dtype)

    def _indexer_inputs(self, x: Tensor, q_res: Tensor, ropes: Ropes, positions: Tensor
                        ) -> tuple[Tensor, Tensor]:
        """The indexer's rotated queries `(T, Hi, Di)` and head weights `(T, Hi)` fp32."""
        ix, v4 = self.compressor.indexer, self.v4
        cos, sin = ropes.at("compress", positions)
        qi = ix.q_b_proj(q_res).view(x.shape[0], v4.index_n_heads, v4.index_head_dim)
        weights = fp32_linear(x, ix.scorer.weights_proj).float() * v4.index_n_heads**-0.5
        return rope_tail(qi, cos, sin), weights

    def _attend_torch(self, q: Tensor, cache: Tensor, x: Tensor, q_res: Tensor, ropes: Ropes,
                      positions: Tensor, ctx: ForwardContext) -> Tensor:
        """The reference: per sequence, gather its rows, mask, softmax with sinks."""
        out, w, f, meta = torch.empty_like(q), self.v4.sliding_window, self.fields, ctx.meta
        comp = self.compressor
        if comp is not None and comp.indexer is not None:
            qi, weights = self._indexer_inputs(x, q_res, ropes, positions)
        start = 0
        for b, (q_len, end) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            rows_q = slice(start, start + q_len)
            start += q_len
            rows = gather_kv(cache, meta.block_tables[b], end)[:, 0]  # (S, width)
            lo = max(0, end - q_len - w + 1)
            cols = torch.arange(lo, end, device=q.device)[None, :]
            p = positions[rows_q, None]
            keys, allowed = rows[lo:, f.kv], (cols <= p) & (cols > p - w)
            if comp is not None and end // comp.rate > 0:
                n = end // comp.rate
                last = (torch.arange(n, device=q.device) + 1) * comp.rate - 1
                chosen = visible_entries(positions[rows_q], comp.rate, n)
                if comp.indexer is not None:
                    chosen = indexer_select(qi[rows_q], weights[rows_q], rows[last, f.idx_key],
                                            chosen, self.v4.index_topk,
                                            self.v4.index_head_dim**-0.5)
                keys = torch.cat([keys, rows[last, f.entry]])
                allowed = torch.cat([allowed, chosen], dim=1)
            out[rows_q] = sink_attention(q[rows_q], keys, allowed, self.sinks, self.scale)
        return out

    def _attend_triton(self, q: Tensor, cache: Tensor, x: Tensor, q_res: Tensor, ropes: Ropes,
                       positions: Tensor, ctx: ForwardContext) -> Tensor:
        """The kernels: indexer scores, torch.topk, sparse attention, all queries at once."""
        from runtime.kernels.triton_compressed import indexer_scores, sparse_attention
        from runtime.kernels.triton_mla import query_tokens

        meta, f, comp = ctx.meta, self.fields, self.compressor
        seq, pos = query_tokens(meta)
        rate, chosen = (comp.rate if comp is not None else 0), None
        if comp is not None and comp.indexer is not None:
            qi, weights = self._indexer_inputs(x, q_res, ropes, positions)
            n_max = max(1, meta.max_seq_len // rate)
            scores = indexer_scores(qi.contiguous(), weights.contiguous(), cache,
                                    meta.block_tables, seq, pos, f.idx_key.start, rate, n_max,
                                    self.v4.index_head_dim**-0.5)
            top = scores.topk(min(self.v4.index_topk, n_max), dim=-1)
            chosen = torch.where(torch.isinf(top.values), -1, top.indices).to(torch.int32)
        return sparse_attention(q.contiguous(), cache, meta.block_tables, seq, pos,
                                self.sinks.float(), self.scale, kv_offset=f.kv.start,
                                window=self.v4.sliding_window,
                                entry_offset=f.entry.start if f.entry else 0, rate=rate,
                                chosen=chosen)
