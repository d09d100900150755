"""DeepSeek-V4's indexer scores and sparse attention in Triton, over the paged per-token rows
(runtime/models/compressed_rows.py); runtime/kernels/torch_compressed.py is the reference.

- `indexer_scores`: per query token, `sum_h w_h relu(q_h . key_e) * scale` for every entry e
  of its sequence (-inf for entries of windows not yet closed at its position); the top k is
  then torch.topk over those rows.
- `sparse_attention`: per query token and block of heads, an online softmax over its window
  keys (the `kv` field of the last `window` tokens) and over its compressed entries (the
  `entry` field at each window's closing token): all visible ones (HCA) or those listed in
  `chosen` (CSA, -1 for none), with each head's sink logit in the denominator.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_ptr(cache, tables, seq, token, s_bt, s_cp, s_cn, page_size, mask):
    page = tl.load(tables + seq * s_bt + token // page_size, mask=mask, other=0).to(tl.int64)
    return cache + page * s_cp + (token % page_size) * s_cn


@triton.jit
def _indexer_kernel(
    q, w, cache, tables, token_seq, token_pos, out, scale,
    s_qt, s_qh, s_wt, s_cp, s_cn, s_bt, s_ot,
    heads, dim, key_off, rate, page_size, max_entries,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_HI: tl.constexpr,
):
    t = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, BLOCK_HI)
    seq = tl.load(token_seq + t)
    visible = e < (tl.load(token_pos + t) + 1) // rate
    row = _row_ptr(cache, tables, seq, (e + 1) * rate - 1, s_bt, s_cp, s_cn, page_size, visible)
    keys = tl.load(row[:, None] + key_off + d[None, :],
                   mask=visible[:, None] & (d[None, :] < dim), other=0.0).to(tl.float32)
    qh = tl.load(q + t * s_qt + h[:, None] * s_qh + d[None, :],
                 mask=(h[:, None] < heads) & (d[None, :] < dim), other=0.0).to(tl.float32)
    wh = tl.load(w + t * s_wt + h, mask=h < heads, other=0.0).to(tl.float32)
    s = tl.maximum(tl.dot(qh, tl.trans(keys)), 0.0) * scale  # (Hi, E)
    score = tl.sum(s * wh[:, None], 0)
    score = tl.where(visible, score, float("-inf"))
    tl.store(out + t * s_ot + e, score, mask=e < max_entries)


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, cache: torch.Tensor,
                   block_tables: torch.Tensor, token_seq: torch.Tensor, token_pos: torch.Tensor,
                   key_offset: int, rate: int, max_entries: int, scale: float) -> torch.Tensor:
    """Scores `(T, max_entries)` fp32 of q `(T, Hi, Di)` against the indexer keys stored at
    column `key_offset` of the rows of `cache` `[pages, P, 1, width]`; weights `(T, Hi)`."""
    t, heads, dim = q.shape
    out = torch.empty(t, max_entries, dtype=torch.float32, device=q.device)
    block_e = 32
    grid = (t, triton.cdiv(max_entries, block_e))
    _indexer_kernel[grid](
        q, weights, cache, block_tables, token_seq, token_pos, out, scale,
        q.stride(0), q.stride(1), weights.stride(0), cache.stride(0), cache.stride(1),
        block_tables.stride(0), out.stride(0),
        heads, dim, key_offset, rate, cache.shape[1], max_entries,
        BLOCK_E=block_e, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        BLOCK_HI=max(16, triton.next_power_of_2(heads)),
    )
    return out


@triton.jit
def _online(s, m, lsum, acc, vals):
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(s - m_new[:, None])
    return m_new, lsum * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p, vals)


@triton.jit
def _sparse_kernel(
    q, cache, tables, token_seq, token_pos, chosen, sinks, out, scale,
    s_qt, s_qh, s_cp, s_cn, s_bt, s_ct, s_ot, s_oh,
    heads, dim, kv_off, entry_off, window, rate, top_k, page_size,
    HAS_ENTRIES: tl.constexpr, ALL_ENTRIES: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    hm, dm = h < heads, d < dim
    seq = tl.load(token_seq + t)
    pos = tl.load(token_pos + t)
    qh = tl.load(q + t * s_qt + h[:, None] * s_qh + d[None, :], mask=hm[:, None] & dm[None, :],
                 other=0.0).to(tl.float32)
    sink = tl.load(sinks + h, mask=hm, other=0.0).to(tl.float32)
    m, lsum = sink, tl.full((BLOCK_H,), 1.0, tl.float32)  # the sink: logit, weight exp(0)
    acc = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
    lo = tl.maximum(pos - window + 1, 0)
    for start in range(lo, pos + 1, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        nm = n <= pos
        row = _row_ptr(cache, tables, seq, n, s_bt, s_cp, s_cn, page_size, nm)
        k = tl.load(row[:, None] + kv_off + d[None, :], mask=nm[:, None] & dm[None, :],
                    other=0.0).to(tl.float32)
        s = tl.where(nm[None, :], tl.dot(qh, tl.trans(k)) * scale, float("-inf"))
        m, lsum, acc = _online(s, m, lsum, acc, k)
    if HAS_ENTRIES:
        count = (pos + 1) // rate if ALL_ENTRIES else top_k
        for start in range(0, count, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            if ALL_ENTRIES:
                e = j
                em = j < count
            else:
                e = tl.load(chosen + t * s_ct + j, mask=j < count, other=-1)
                em = e >= 0
            row = _row_ptr(cache, tables, seq, (e + 1) * rate - 1, s_bt, s_cp, s_cn,
                           page_size, em)
            k = tl.load(row[:, None] + entry_off + d[None, :], mask=em[:, None] & dm[None, :],
                        other=0.0).to(tl.float32)
            s = tl.where(em[None, :], tl.dot(qh, tl.trans(k)) * scale, float("-inf"))
            m, lsum, acc = _online(s, m, lsum, acc, k)
    # The sink joined with logit `sink`: rescale its unit weight to the final maximum.
    tl.store(out + t * s_ot + h[:, None] * s_oh + d[None, :], acc / lsum[:, None],
             mask=hm[:, None] & dm[None, :])


def sparse_attention(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor,
                     token_seq: torch.Tensor, token_pos: torch.Tensor, sinks: torch.Tensor,
                     scale: float, *, kv_offset: int, window: int, entry_offset: int = 0,
                     rate: int = 0, chosen: torch.Tensor | None = None) -> torch.Tensor:
    """q `(T, H, D)` over each token's window keys and its entries (see the module doc):
    `rate` 0 for a window-only layer; `chosen` `(T, k)` int32 entry ids (-1: none) for CSA,
    None for HCA (every visible entry)."""
    t, heads, dim = q.shape
    out = torch.empty_like(q, dtype=torch.float32)
    block_h = 16
    has_entries, every = rate > 0, chosen is None
    picks = chosen if chosen is not None else token_seq  # unread when every entry is visible
    grid = (t, triton.cdiv(heads, block_h))
    _sparse_kernel[grid](
        q, cache, block_tables, token_seq, token_pos, picks, sinks, out, scale,
        q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), block_tables.stride(0),
        picks.stride(0), out.stride(0), out.stride(1),
        heads, dim, kv_offset, entry_offset, window, max(rate, 1),
        0 if chosen is None else chosen.shape[1], cache.shape[1],
        HAS_ENTRIES=has_entries, ALL_ENTRIES=every, BLOCK_H=block_h, BLOCK_N=16,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )
    return out.to(q.dtype)
