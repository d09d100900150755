"""Scatter new keys and values into their page slots (one launch for K and V)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime.kernels.pdl import pdl_enabled, wait_and_release


@triton.jit(do_not_specialize=["num_tokens"])
def _store_kv_kernel(
    K, V, KC, VC, SLOTS, num_tokens,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cp, stride_cs, stride_ch,
    KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, PAGE_SIZE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    wait_and_release(PDL)
    # A tile is BLOCK_T tokens x BLOCK_C (kv_heads * BLOCK_D flattened) elements.
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    h = cols // BLOCK_D
    d = cols % BLOCK_D
    slots = tl.load(SLOTS + toks, mask=toks < num_tokens, other=-1).to(tl.int64)
    # A negative slot marks a padding token (CUDA-graph batches): nothing is written for it.
    t_ok = slots >= 0
    mask = t_ok[:, None] & ((h < KV_HEADS) & (d < HEAD_DIM))[None, :]
    dst = (slots // PAGE_SIZE) * stride_cp + (slots % PAGE_SIZE) * stride_cs
    dst = dst[:, None] + (h * stride_ch + d)[None, :]
    t64 = toks.to(tl.int64)[:, None]
    k = tl.load(K + t64 * stride_kt + (h * stride_kh + d)[None, :], mask=mask)
    v = tl.load(V + t64 * stride_vt + (h * stride_vh + d)[None, :], mask=mask)
    tl.store(KC + dst, k.to(KC.dtype.element_ty), mask=mask)
    tl.store(VC + dst, v.to(VC.dtype.element_ty), mask=mask)


def store_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    pdl: bool = True,
) -> None:
    """Write k, v `(T, Hkv, D)` into `k_cache`, `v_cache` `[num_pages, page_size, Hkv, D]`.

    slot_mapping `(T,)` int (page * page_size + offset); a negative slot skips its token. The
    caches (strided views sharing strides) are mutated at the named slots only; values are cast
    to the cache dtype. k and v may be strided (slices of a fused qkv) with contiguous head_dim.
    """
    num_tokens, kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    assert k_cache.stride() == v_cache.stride(), "k and v caches must share strides"
    assert k.stride(2) == 1 and v.stride(2) == 1 and k_cache.stride(3) == 1, "contiguous head_dim"
    assert k_cache.shape[2:] == k.shape[1:], "cache and new keys differ in heads or head_dim"
    block_d = triton.next_power_of_2(head_dim)
    width = kv_heads * block_d
    block_c = min(width, 1024)
    block_t = max(1, min(16, 4096 // block_c))
    grid = (triton.cdiv(num_tokens, block_t), triton.cdiv(width, block_c))
    _store_kv_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping, num_tokens,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        KV_HEADS=kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_T=block_t, BLOCK_C=block_c, PAGE_SIZE=k_cache.shape[1],
        PDL=pdl_enabled(k.device, pdl), num_warps=4, launch_pdl=pdl_enabled(k.device, pdl),
    )  # fmt: skip
