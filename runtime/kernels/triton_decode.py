"""Paged split-KV decode attention (one query per sequence) and the log-sum-exp merge.

Decode is bound by reading K and V once, so the keys of each sequence are split across the SMs:
program (split, kv_head, seq) reads one chunk of keys for the G query heads of that kv head
(packed as the rows of one tile) and writes an unnormalised-then-normalised partial output and
its base-2 log-sum-exp; `merge_splits` combines them. The grid depends only on the batch size and
`num_splits`, and nothing reads a tensor value on the host, so a decode step can be captured in a
CUDA graph as long as `num_splits` is fixed (the default derives it from the block table's width).

Also home to the page-walking helper and the merge kernel shared with the extend kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime.kernels.fp8_kv import is_fp8
from runtime.kernels.pdl import pdl_enabled, wait_and_release
from runtime.kernels.triton_fp8 import fp8_decode, fp8_views

LOG2E = 1.4426950408889634
MAX_SPLITS = 256


@dataclass(frozen=True)
class DecodeConfig:
    """Tile shape and pipelining of the decode kernel."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


def default_decode_config(device: torch.device) -> DecodeConfig:
    """Tuned on an H200 (bench/gpu_kernels.py --tune decode); small tiles for the interpreter.

    H200, Qwen2.5-7B shape, batch 1 over 1M keys with 132 splits: 64-key tiles, 4 warps,
    3 stages read 4.26 TB/s; 128-key tiles 3.6-4.3 depending on splits; 32-key tiles <= 4.0.
    """
    if device.type == "cuda":
        return DecodeConfig(block_n=64, num_warps=4, num_stages=3)
    return DecodeConfig(block_n=16, num_warps=1, num_stages=1)


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a fixed 4 elsewhere, for the interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_num_splits(batch: int, kv_heads: int, max_keys: int, device: torch.device) -> int:
    """Splits per sequence: about 4 programs per SM, each chunk at least 256 keys.

    Depends only on static quantities (batch, heads, the block table's width in keys), so a
    CUDA graph captured for one batch size stays valid as sequences grow within that width.
    """
    want = triton.cdiv(4 * num_sms(device), batch * kv_heads)
    return max(1, min(MAX_SPLITS, want, triton.cdiv(max_keys, 256)))


@triton.jit
def page_rows(
    bt_row,
    start,
    keys,
    kv_len,
    stride_page,
    stride_slot,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Element offsets (int64) of keys `start .. start+BLOCK_N-1` through a block-table row.

    When PAGE_SIZE is a multiple of BLOCK_N (and `start` is BLOCK_N-aligned) the tile lies in one
    page: one scalar table read. Otherwise each key reads its own page id.
    """
    if PAGE_SIZE % BLOCK_N == 0:
        page = tl.load(bt_row + start // PAGE_SIZE).to(tl.int64)
        base = page * stride_page + (start % PAGE_SIZE) * stride_slot
        return base + tl.arange(0, BLOCK_N).to(tl.int64) * stride_slot
    else:
        pages = tl.load(bt_row + keys // PAGE_SIZE, mask=keys < kv_len, other=0).to(tl.int64)
        return pages * stride_page + (keys % PAGE_SIZE).to(tl.int64) * stride_slot


@triton.jit
def load_tile(ptrs, row_ok, d_ok, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a `[rows, BLOCK_D]` tile; masks only what the constexprs say may be out of range."""
    if ROW_MASK:
        if EVEN_D:
            return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            return tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=d_ok[None, :], other=0.0)


@triton.jit
def _decode_kernel(
    Q, K, V, KS, VS, Out, OP, LP, BT, SEQ_LENS,
    qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kp, stride_ks, stride_kh,
    stride_bt,
    stride_opt, stride_oph, stride_ops, stride_lpt, stride_lph,
    num_splits,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    DIRECT: tl.constexpr, PDL: tl.constexpr, FP8: tl.constexpr, FP8_NATIVE: tl.constexpr,
):  # fmt: skip
    wait_and_release(PDL)
    split = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM

    kv_len = tl.load(SEQ_LENS + b)
    # Chunks are BLOCK_N-aligned so a tile never straddles a page when PAGE_SIZE % BLOCK_N == 0.
    chunk = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    if lo >= kv_len:
        return  # past the last key: the merge reads only splits below cdiv(kv_len, chunk)
    hi = tl.minimum(lo + chunk, kv_len)

    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < GROUP
    head = kvh * GROUP + rows
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + b.to(tl.int64) * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
    q = load_tile(q_ptrs, row_ok, d_ok, True, EVEN_D)

    bt_row = BT + b.to(tl.int64) * stride_bt
    k_head = K + kvh * stride_kh
    v_head = V + kvh * stride_kh
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k_ok = keys < hi
        rows_off = page_rows(bt_row, start, keys, kv_len, stride_kp, stride_ks, PAGE_SIZE, BLOCK_N)
        kv_off = rows_off[:, None] + offs_d[None, :]
        k = load_tile(k_head + kv_off, k_ok, d_ok, True, EVEN_D)
        if FP8:  # e4m3 values, each key row's scale after them (runtime/kernels/fp8_kv.py)
            scale_off = (kvh * stride_kh + rows_off + HEAD_DIM) // 4
            k = fp8_decode(k, FP8_NATIVE).to(q.dtype)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if FP8:
            s = s * tl.load(KS + scale_off, mask=k_ok, other=0.0)[None, :]
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_tile(v_head + kv_off, k_ok, d_ok, True, EVEN_D)
        if FP8:  # a value row's scale multiplies its probability
            v = fp8_decode(v, FP8_NATIVE).to(q.dtype)
            p = p * tl.load(VS + scale_off, mask=k_ok, other=0.0)[None, :]
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if DIRECT:
        o_ptrs = Out + b.to(tl.int64) * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        op = OP + b.to(tl.int64) * stride_opt + head[:, None] * stride_oph + split * stride_ops
        tl.store(op + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
        tl.store(LP + b.to(tl.int64) * stride_lpt + head * stride_lph + split, lse, mask=row_ok)


@triton.jit(do_not_specialize=["stride_lpt", "stride_lph", "num_splits"])
def _merge_kernel(
    OP, LP, Out, SEQ_LENS,
    stride_opt, stride_oph, stride_ops, stride_lpt, stride_lph, stride_ot, stride_oh,
    num_splits, BLOCK_S: tl.constexpr, CHUNK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    wait_and_release(PDL)
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    used = num_splits
    if CHUNK_N > 0:
        # The decode kernel's chunking: splits past the sequence's last key saw nothing.
        kv_len = tl.load(SEQ_LENS + t)
        used = tl.cdiv(kv_len, tl.cdiv(tl.cdiv(kv_len, num_splits), CHUNK_N) * CHUNK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m = tl.full([1], float("-inf"), tl.float32)
    l_sum = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, used, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < used
        lse = tl.load(LP + t * stride_lpt + h * stride_lph + offs_s, mask=s_ok, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(lse, 0))
        # Every split of a sequence may be empty only for kv_len 0, which never reaches here.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.math.exp2(lse - m_use)  # (BLOCK_S,)
        part = tl.load(
            OP + t * stride_opt + h * stride_oph + offs_s[:, None] * stride_ops + offs_d[None, :],
            mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        alpha = tl.math.exp2(m - m_use)
        acc = acc * alpha + tl.sum(part * w[:, None], 0)
        l_sum = l_sum * alpha + tl.sum(w, 0)
        m = m_new
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)
    tl.store(Out + t * stride_ot + h * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=d_ok)


def compile_merges(num_heads: int, head_dim: int, dtype: torch.dtype,
                   device: torch.device) -> None:
    """Compile the extend path's merge for every split count class it may meet (its block of
    splits is a compile-time size), so no turn waits for one."""
    for s in (2, 4, 8, 16, 32, 64):
        partial = torch.zeros((1, num_heads, s, head_dim), dtype=torch.float32, device=device)
        lse = torch.zeros((1, num_heads, s), dtype=torch.float32, device=device)
        merge_splits(partial, lse, torch.empty((1, num_heads, head_dim), dtype=dtype,
                                               device=device))


def merge_splits(partial: torch.Tensor, lse: torch.Tensor, out: torch.Tensor,
                 seq_lens: torch.Tensor | None = None, chunk_n: int = 0, *, pdl: bool = True
                 ) -> torch.Tensor:
    """Combine split partials into `out`.

    partial `(T, H, S, D)` fp32 (each split's normalised output), lse `(T, H, S)` fp32 base-2
    log-sum-exp (-inf for an empty split); out `(T, H, D)` (any float dtype) is written, returned.
    With the decode kernel's `seq_lens` and tile size `chunk_n`, row t reads only the splits its
    keys reached (a 1K-token sequence under a 1M-wide graph uses 16 of 132).
    """
    t, h, s, d = partial.shape
    if t == 0:
        return out
    block_d = triton.next_power_of_2(d)
    block_s = min(64 if d <= 128 else 32, triton.next_power_of_2(s))
    _merge_kernel[(t, h)](
        partial, lse, out, seq_lens if seq_lens is not None else lse,
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        s, BLOCK_S=block_s, CHUNK_N=chunk_n if seq_lens is not None else 0,
        HEAD_DIM=d, BLOCK_D=block_d, PDL=pdl_enabled(out.device, pdl),
        num_warps=4 if d >= 128 else 2, launch_pdl=pdl_enabled(out.device, pdl),
    )  # fmt: skip
    return out


def split_buffers(out: torch.Tensor, num_splits: int
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Per-split partial outputs `(T, H, S, D)` and base-2 LSEs `(T, H, S)` in fp32 for an
    output `(T, H, D)`, and their strides as the kernels take them; with one split the kernel
    writes `out` directly and the buffers are placeholders."""
    if num_splits == 1:
        return out, out, (0, 0, 0, 0, 0)
    t, h, d = out.shape
    partial = torch.empty((t, h, num_splits, d), dtype=torch.float32, device=out.device)
    lse = torch.empty((t, h, num_splits), dtype=torch.float32, device=out.device)
    strides = (partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0),
               lse.stride(1))  # fmt: skip
    return partial, lse, strides


def attention_views(k_cache: torch.Tensor, v_cache: torch.Tensor):
    """(k values, v values, k scales, v scales, fp8, native) as the attention kernels take them:
    for fp8 caches the values views and the caches as fp32 words (triton_fp8.py), otherwise
    the caches themselves (the scale arguments are placeholders)."""
    if not is_fp8(k_cache):
        return k_cache, v_cache, k_cache, v_cache, False, False
    kc, ks, native = fp8_views(k_cache)
    vc, vs, _ = fp8_views(v_cache)
    return kc, vc, ks, vs, True, native


def check_cache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Assert the layout the kernels rely on (shared strides, contiguous head_dim, GQA)."""
    assert k_cache.dim() == 4, "cache views are [num_pages, page_size, kv_heads, head_dim]"
    assert k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride(), (
        "k and v cache views must share shape and strides (views of one page pool)"
    )
    assert k_cache.stride(3) == 1 and q.stride(2) == 1, "head_dim must be contiguous"
    assert q.shape[-1] == k_cache.shape[3], "q and cache head_dim differ"
    assert q.shape[1] % k_cache.shape[2] == 0, "query heads must be a multiple of kv heads"


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    num_splits: int | None = None,
    config: DecodeConfig | None = None,
    out: torch.Tensor | None = None,
    pdl: bool = True,
) -> torch.Tensor:
    """One query per sequence over its paged keys (all of them: the query is the last token).

    q `(B, Hq, D)`; k_cache/v_cache `[num_pages, page_size, Hkv, D]` (strided views, same strides);
    block_tables `(B, max_pages)` int32; seq_lens `(B,)` int32, each >= 1. Returns `(B, Hq, D)` in
    q's dtype (written into `out` when given). Mutates nothing else. No host syncs: with a fixed
    `num_splits` the launch is CUDA-graph safe.
    """
    k_cache, v_cache, ks, vs, fp8, native = attention_views(k_cache, v_cache)
    check_cache(q, k_cache, v_cache)
    batch, num_heads, head_dim = q.shape
    _, page_size, kv_heads, _ = k_cache.shape
    group = num_heads // kv_heads
    cfg = config or default_decode_config(q.device)
    if num_splits is None:
        max_keys = block_tables.shape[1] * page_size
        num_splits = decode_num_splits(batch, kv_heads, max_keys, q.device)
    out = torch.empty_like(q) if out is None else out
    if batch == 0:
        return out
    direct = num_splits == 1
    partial, lse, p_strides = split_buffers(out, num_splits)
    _decode_kernel[(num_splits, kv_heads, batch)](
        q, k_cache, v_cache, ks, vs, out, partial, lse, block_tables, seq_lens,
        scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        *p_strides,
        num_splits,
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=cfg.block_n,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), PAGE_SIZE=page_size,
        DIRECT=direct, PDL=pdl_enabled(q.device, pdl), FP8=fp8, FP8_NATIVE=native,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl_enabled(q.device, pdl),
    )  # fmt: skip
    if not direct:
        merge_splits(partial, lse, out, seq_lens, cfg.block_n, pdl=pdl)
    return out
