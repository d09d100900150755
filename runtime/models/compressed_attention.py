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


@dataclass
class _Sequence:
    """One sequence of the forward: its rows gathered, its queries' range and positions."""

    rows: Tensor  # (S, width) every token's row, this forward's included
    table: Tensor  # its block table
    start: int  # first new position
    end: int  # kv length after the forward
    q_rows: slice  # its queries' rows in the flattened batch


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
        out = torch.empty_like(q)
        for seq in self._sequences(cache, ctx):
            if self.compressor is not None:
                self._close_windows(cache, seq, ropes, ctx)
            out[seq.q_rows] = self._attend(q[seq.q_rows], seq, x[seq.q_rows],
                                           q_res[seq.q_rows], ropes, positions[seq.q_rows])
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
            values += [(f.comp_kv, ctx.ops.linear(x, comp.kv_proj)),
                       (f.comp_gate, ctx.ops.linear(x, comp.gate_proj))]
            if comp.indexer is not None:
                values += [(f.idx_kv, ctx.ops.linear(x, comp.indexer.kv_proj)),
                           (f.idx_gate, ctx.ops.linear(x, comp.indexer.gate_proj))]
        for field, value in values:
            cache[pages, offsets, 0, field] = value.to(cache.dtype)

    def _sequences(self, cache: Tensor, ctx: ForwardContext):
        start = 0
        for b, (q_len, kv_len) in enumerate(zip(ctx.meta.query_lens_cpu, ctx.meta.seq_lens_cpu)):
            table = ctx.meta.block_tables[b]
            rows = gather_kv(cache, table, kv_len)[:, 0]  # (S, width)
            yield _Sequence(rows, table, kv_len - q_len, kv_len, slice(start, start + q_len))
            start += q_len

    def _close_windows(self, cache: Tensor, seq: _Sequence, ropes: Ropes,
                       ctx: ForwardContext) -> None:
        """Pool every window this forward's tokens close; write its entry (and indexer key)
        at the window's last token, in the pages and in `seq.rows`."""
        comp, f = self.compressor, self.fields
        assert comp is not None
        rate = comp.rate
        windows = torch.arange(seq.start // rate, seq.end // rate, device=seq.rows.device)
        if windows.numel() == 0:
            return
        cos, sin = ropes.at("compress", windows * rate)
        last = (windows + 1) * rate - 1  # the closing tokens
        slots = seq.table[last // ctx.meta.page_size].long(), last % ctx.meta.page_size
        parts = [(f.entry, comp.kv_norm, f.comp_kv, f.comp_gate, comp.position_bias)]
        if comp.indexer is not None:
            ix = comp.indexer
            parts.append((f.idx_key, ix.kv_norm, f.idx_kv, f.idx_gate, ix.position_bias))
        for field, norm, kv_f, gate_f, bias in parts:
            pooled = pool_windows(seq.rows[:, kv_f], seq.rows[:, gate_f], bias.float(), windows,
                                  rate, comp.overlap)
            entry = rope_tail(norm(pooled)[:, None], cos, sin)[:, 0].to(cache.dtype)
            cache[slots[0], slots[1], 0, field] = entry
            seq.rows[last, field] = entry

    def _attend(self, q: Tensor, seq: _Sequence, x: Tensor, q_res: Tensor, ropes: Ropes,
                positions: Tensor) -> Tensor:
        """q `(n_q, H, D)` over the window keys and the chosen compressed entries."""
        w, f = self.v4.sliding_window, self.fields
        lo = max(0, seq.start - w + 1)
        cols = torch.arange(lo, seq.end, device=q.device)[None, :]
        p = positions[:, None]
        keys, allowed = seq.rows[lo:, f.kv], (cols <= p) & (cols > p - w)
        if self.compressor is not None and seq.end // self.compressor.rate > 0:
            entries, chosen = self._entries(seq, x, q_res, ropes, positions)
            keys, allowed = torch.cat([keys, entries]), torch.cat([allowed, chosen], dim=1)
        return sink_attention(q, keys, allowed, self.sinks, self.scale)

    def _entries(self, seq: _Sequence, x: Tensor, q_res: Tensor, ropes: Ropes,
                 positions: Tensor) -> tuple[Tensor, Tensor]:
        """The sequence's compressed entries and which of them each query attends."""
        comp, f = self.compressor, self.fields
        assert comp is not None
        n = seq.end // comp.rate
        last = (torch.arange(n, device=x.device) + 1) * comp.rate - 1
        visible = visible_entries(positions, comp.rate, n)
        if comp.indexer is None:
            return seq.rows[last, f.entry], visible
        ix, v4 = comp.indexer, self.v4
        cos, sin = ropes.at("compress", positions)
        qi = ix.q_b_proj(q_res).view(x.shape[0], v4.index_n_heads, v4.index_head_dim)
        qi = rope_tail(qi, cos, sin)
        weights = ix.scorer.weights_proj(x).float() * v4.index_n_heads**-0.5
        chosen = indexer_select(qi, weights, seq.rows[last, f.idx_key], visible, v4.index_topk,
                                v4.index_head_dim**-0.5)
        return seq.rows[last, f.entry], chosen
