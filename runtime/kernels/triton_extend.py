"""Paged extend (prefill) attention: new queries over cached plus new keys, varlen batches.

One program owns a tile of BLOCK_M rows, each row a (query token, query head) pair of one kv
head: the G = Hq / Hkv heads of a token sit in adjacent rows, so every K/V tile read from the
pages serves all G heads (with G = 7, 18 tokens x 7 heads fill 126 of 128 rows). Causality is
aligned to the end of each sequence; key blocks every row of the tile may see run unmasked, the
few on the diagonal run masked, and blocks past the last row's position are never visited.

Long caches with few query tiles (a short turn over a 1M-token context) split the keys across
programs; partials are combined by the log-sum-exp merge shared with the decode kernel.
Grid: (split * tiles + tile, kv_head, seq); programs of neighbouring tiles read the same K/V
tiles at about the same time, so the L2 serves most re-reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from runtime.kernels.triton_decode import (
    LOG2E,
    attention_views,
    check_cache,
    load_tile,
    merge_splits,
    num_sms,
    split_buffers,
)
from runtime.kernels.triton_decode import page_rows as _page_rows
from runtime.kernels.triton_fp8 import fp8_decode

MIN_SPLIT_KEYS = 8192  # below this a split's partial write and merge cost more than it saves


@dataclass(frozen=True)
class ExtendConfig:
    """Tile shape and pipelining of the extend kernel."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False  # bulk tensor copies for whole in-page K/V tiles (Hopper and later)
    warp_specialize: bool = False
    prefetch_page: bool = False  # with tma: read the next tile's page id an iteration early


def _page_descriptor(cache: torch.Tensor, block_n: int) -> TensorDescriptor:
    """A TMA descriptor over one layer's cache as `[pages, page_size, Hkv * D]` (no copy)."""
    view = cache.flatten(2)  # (pages, page_size, Hkv * D): heads are adjacent, D contiguous
    return TensorDescriptor(view, list(view.shape), list(view.stride()),
                            [1, block_n, cache.shape[3]])  # fmt: skip


def default_extend_config(device: torch.device, head_dim: int,
                          elem_bytes: int = 2) -> ExtendConfig:
    """Tuned on an H200 (bench/gpu_kernels.py --tune extend); small tiles for the interpreter.

    H200, 2K queries over 64K-1M keys, Qwen2.5-7B shape: 128x128 tiles, 8 warps, 3 stages,
    TMA K/V tiles with each page id read an iteration ahead: 500-506 TFLOP/s; without that
    prefetch 415-423 (2 stages: 430-440); 64-key tiles 451-465; warp specialisation no better.
    Key splits fill the last wave of programs.
    """
    if device.type == "cuda":
        if head_dim > 128 or elem_bytes > 2:  # not tuned: keeps shared memory in bounds
            # (fp32 128x128 tiles in three stages would need 329 KB of the H200's 227 KB)
            return ExtendConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)
        if has_tma(device):
            return ExtendConfig(block_m=128, block_n=128, num_warps=8, num_stages=3, tma=True,
                                prefetch_page=True)
        return ExtendConfig(block_m=128, block_n=128, num_warps=8, num_stages=3)
    return ExtendConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)


@functools.lru_cache(maxsize=8)
def has_tma(device: torch.device) -> bool:
    """Whether the device has the bulk tensor copy engine (compute capability 9.0 and later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def extend_num_splits(tiles: int, max_seq_len: int, device: torch.device) -> int:
    """Key splits for a grid of `tiles` (query tiles x kv heads x seqs) programs.

    Picks the count that best fills the last wave of programs, at most one split per
    MIN_SPLIT_KEYS keys and 64 in all; a split must save over 5% of the estimated time.
    """
    slots = num_sms(device)
    cap = max(1, min(64, max_seq_len // MIN_SPLIT_KEYS))
    best, best_cost = 1, float(triton.cdiv(tiles, slots))
    for s in range(2, cap + 1):
        cost = triton.cdiv(tiles * s, slots) / s
        if cost < 0.95 * best_cost:
            best, best_cost = s, cost
    return best


@triton.jit
def _kv_tile(
    head_ptr, desc, bt_row, start, keys, k_ok, kv_len, col, stride_kp, stride_ks, offs_d, d_ok,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    EVEN_D: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    """One `[BLOCK_N, BLOCK_D]` K or V tile: a bulk tensor copy (TMA) for whole in-page tiles,
    pointer loads (masked past kv_len on the diagonal) otherwise."""
    if USE_TMA:
        if not MASKED:
            page = tl.load(bt_row + start // PAGE_SIZE)
            return desc.load([page, start % PAGE_SIZE, col]).reshape(BLOCK_N, BLOCK_D)
    rows_off = _page_rows(bt_row, start, keys, kv_len, stride_kp, stride_ks, PAGE_SIZE, BLOCK_N)
    return load_tile(head_ptr + rows_off[:, None] + offs_d[None, :], k_ok, d_ok, MASKED, EVEN_D)


@triton.jit
def _extend_inner(
    acc, l_i, m_i, q, k_head, v_head, k_desc, v_desc, bt_row, lo, hi, pos, kv_len, col,
    qk_scale, stride_kp, stride_ks, offs_d, d_ok, KS, VS, head_off,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, USE_TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
    PREFETCH_PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, FP8: tl.constexpr,
    FP8_NATIVE: tl.constexpr,
):  # fmt: skip
    # Whole in-page TMA tiles: the next tile's page id is read one iteration ahead, so the
    # bulk copy's coordinates never wait on a dependent load.
    PREFETCH: tl.constexpr = PREFETCH_PAGE and USE_TMA and not MASKED
    page = 0
    if PREFETCH:
        page = tl.load(bt_row + lo // PAGE_SIZE, mask=lo < hi, other=0)
    for start in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        keys = start + tl.arange(0, BLOCK_N)
        # Unmasked blocks lie below every row's position, hence inside the sequence.
        k_ok = keys < kv_len
        if PREFETCH:
            nxt = start + BLOCK_N
            next_page = tl.load(bt_row + nxt // PAGE_SIZE, mask=nxt < hi, other=0)
            k = k_desc.load([page, start % PAGE_SIZE, col]).reshape(BLOCK_N, BLOCK_D)
        else:
            k = _kv_tile(k_head, k_desc, bt_row, start, keys, k_ok, kv_len, col, stride_kp,
                         stride_ks, offs_d, d_ok, BLOCK_N, BLOCK_D, PAGE_SIZE, EVEN_D, MASKED,
                         USE_TMA)  # fmt: skip
        if FP8:  # e4m3 values, each key row's scale after them (runtime/kernels/fp8_kv.py)
            rows_off = _page_rows(bt_row, start, keys, kv_len, stride_kp, stride_ks, PAGE_SIZE,
                                  BLOCK_N)  # fmt: skip
            scale_off = (head_off + rows_off + HEAD_DIM) // 4
            k = fp8_decode(k, FP8_NATIVE).to(q.dtype)
        s = tl.dot(q, tl.trans(k))
        if FP8:
            s = s * tl.load(KS + scale_off, mask=k_ok, other=0.0)[None, :]
        if MASKED:
            s = tl.where(keys[None, :] <= pos[:, None], s, float("-inf"))
        # Scale folded into the exponent's FMA; qk_scale > 0 keeps the max and -inf.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        if MASKED:
            # A row may see none of a diagonal block before any other: keep exp2 away from NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(s * qk_scale - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # Masked V loads: stale slots past kv_len may hold anything, and 0 * inf is NaN.
        if PREFETCH:
            v = v_desc.load([page, start % PAGE_SIZE, col]).reshape(BLOCK_N, BLOCK_D)
            page = next_page
        else:
            v = _kv_tile(v_head, v_desc, bt_row, start, keys, k_ok, kv_len, col, stride_kp,
                         stride_ks, offs_d, d_ok, BLOCK_N, BLOCK_D, PAGE_SIZE, EVEN_D, MASKED,
                         USE_TMA)  # fmt: skip
        if FP8:  # a value row's scale multiplies its probability
            v = fp8_decode(v, FP8_NATIVE).to(q.dtype)
            p = p * tl.load(VS + scale_off, mask=k_ok, other=0.0)[None, :]
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


# Sizes that change with every chunk and context are not specialised on (Triton would compile
# a variant for each value class: a first turn's last partial chunk waited 3.9 s for one on the
# H200); they only index, so nothing is lost.
UNSPECIALIZED = ["num_tiles", "num_splits", "stride_lpt", "stride_lph", "stride_bt"]


@triton.jit(do_not_specialize=UNSPECIALIZED)
def _extend_kernel(
    Q, K, V, K_DESC, V_DESC, KS, VS, Out, OP, LP, BT, SEQ_LENS, QSL,
    qk_scale, num_tiles, num_splits,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kp, stride_ks, stride_kh,
    stride_bt,
    stride_opt, stride_oph, stride_ops, stride_lpt, stride_lph,
    GROUP: tl.constexpr, TOKENS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    SPLIT: tl.constexpr, USE_TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
    PREFETCH_PAGE: tl.constexpr, FP8: tl.constexpr, FP8_NATIVE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    tile = pid % num_tiles
    split = pid // num_tiles
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM

    q_start = tl.load(QSL + b)
    q_len = tl.load(QSL + b + 1) - q_start
    kv_len = tl.load(SEQ_LENS + b)
    tok0 = tile * TOKENS
    if tok0 >= q_len:
        return

    rows = tl.arange(0, BLOCK_M)
    tok = tok0 + rows // GROUP  # heads of one token are adjacent rows
    head = kvh * GROUP + rows % GROUP
    row_ok = (rows < TOKENS * GROUP) & (tok < q_len)
    pos = kv_len - q_len + tok  # the last key each row may see
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + (q_start + tok).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh
    q = load_tile(q_ptrs + offs_d[None, :], row_ok, d_ok, True, EVEN_D)

    # Keys this tile needs: [0, end); all rows see [0, first + 1).
    last_tok = tl.minimum(tok0 + TOKENS, q_len)
    end = kv_len - q_len + last_tok
    first = kv_len - q_len + tok0
    if SPLIT:
        chunk = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(lo + chunk, end)
    else:
        lo = 0
        hi = end
    # hi < full_end only when hi is a chunk boundary, so full_end stays BLOCK_N-aligned.
    full_end = tl.maximum(lo, tl.minimum(hi, (first + 1) // BLOCK_N * BLOCK_N))

    bt_row = BT + b.to(tl.int64) * stride_bt
    k_head = K + kvh * stride_kh
    v_head = V + kvh * stride_kh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    col = kvh * HEAD_DIM  # this head's columns in the TMA view [pages, page_size, Hkv * D]
    acc, l_i, m_i = _extend_inner(
        acc, l_i, m_i, q, k_head, v_head, K_DESC, V_DESC, bt_row, lo, full_end, pos, kv_len, col,
        qk_scale, stride_kp, stride_ks, offs_d, d_ok, KS, VS, kvh * stride_kh,
        BLOCK_N, BLOCK_D, PAGE_SIZE, EVEN_D, False, USE_TMA, WARP_SPEC, PREFETCH_PAGE,
        HEAD_DIM, FP8, FP8_NATIVE,
    )  # fmt: skip
    acc, l_i, m_i = _extend_inner(
        acc, l_i, m_i, q, k_head, v_head, K_DESC, V_DESC, bt_row, full_end, hi, pos, kv_len, col,
        qk_scale, stride_kp, stride_ks, offs_d, d_ok, KS, VS, kvh * stride_kh,
        BLOCK_N, BLOCK_D, PAGE_SIZE, EVEN_D, True, USE_TMA, False, False,
        HEAD_DIM, FP8, FP8_NATIVE,
    )  # fmt: skip

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    t_idx = (q_start + tok).to(tl.int64)
    mask = row_ok[:, None] & d_ok[None, :]
    if not SPLIT:
        o_ptrs = Out + t_idx[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=mask)
    else:
        op = OP + t_idx[:, None] * stride_opt + head[:, None] * stride_oph + split * stride_ops
        tl.store(op + offs_d[None, :], out, mask=mask)
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
        tl.store(LP + t_idx * stride_lpt + head * stride_lph + split, lse, mask=row_ok)


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    scale: float,
    *,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    config: ExtendConfig | None = None,
    out: torch.Tensor | None = None,
    pdl: bool = True,
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over all its paged keys.

    q `(T, Hq, D)` (sequence b owns rows `query_start_loc[b]:query_start_loc[b+1]`, the last
    q_len of its seq_lens[b] tokens, whose K/V are already stored); k_cache/v_cache
    `[num_pages, page_size, Hkv, D]` strided views with equal strides; block_tables
    `(B, max_pages)` int32; seq_lens `(B,)` and query_start_loc `(B+1,)` int32. Query i of a
    sequence sees keys `0 .. kv_len - q_len + i`. Returns `(T, Hq, D)` in q's dtype (`out` when
    given); mutates nothing else. `max_seq_len` (a host bound on seq_lens) enables key splits.
    fp8 caches (`D + 4` bytes a row, triton_fp8.py) are read without TMA.
    """
    k_cache, v_cache, ks, vs, fp8, native = attention_views(k_cache, v_cache)
    check_cache(q, k_cache, v_cache)
    total, num_heads, head_dim = q.shape
    _, page_size, kv_heads, _ = k_cache.shape
    group = num_heads // kv_heads
    batch = seq_lens.shape[0]
    cfg = config or default_extend_config(q.device, head_dim,
                                          max(q.element_size(), k_cache.element_size()))
    block_m = max(cfg.block_m, triton.next_power_of_2(group))
    tokens = block_m // group
    out = torch.empty_like(q) if out is None else out
    if total == 0 or batch == 0:
        return out
    num_tiles = triton.cdiv(max_query_len, tokens)
    if num_splits is None:
        num_splits = 1
        if max_seq_len is not None:
            num_splits = extend_num_splits(num_tiles * kv_heads * batch, max_seq_len, q.device)
    # Every valid row is reached by split 0; the merge weighs a split that saw none at zero.
    partial, lse, p_strides = split_buffers(out, num_splits)
    use_tma = (
        cfg.tma and page_size % cfg.block_n == 0 and triton.next_power_of_2(head_dim) == head_dim
        and not fp8
    )
    k_desc = _page_descriptor(k_cache, cfg.block_n) if use_tma else None
    v_desc = _page_descriptor(v_cache, cfg.block_n) if use_tma else None
    _extend_kernel[(num_tiles * num_splits, kv_heads, batch)](
        q, k_cache, v_cache, k_desc, v_desc, ks, vs, out, partial, lse,
        block_tables, seq_lens, query_start_loc,
        scale * LOG2E, num_tiles, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        *p_strides,
        GROUP=group, TOKENS=tokens, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), PAGE_SIZE=page_size,
        SPLIT=num_splits > 1, USE_TMA=use_tma, WARP_SPEC=cfg.warp_specialize,
        PREFETCH_PAGE=cfg.prefetch_page and not fp8, FP8=fp8, FP8_NATIVE=native,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if num_splits > 1:
        merge_splits(partial, lse, out, pdl=pdl)
    return out
