"""fp8 KV pages in the Triton kernels: the store, and e4m3 <-> fp32 for the attention kernels.

Layout and scaling are runtime/kernels/fp8_kv.py's: each head's row is `head_dim` e4m3 values,
then the fp32 scale (amax / 448) they were divided by. On CUDA the kernels convert with the
hardware's e4m3 instructions; the Triton interpreter's fp8 conversion gives wrong values, so
there (`native=False`) the caches are read as uint8 and the bits encoded and decoded with
integer arithmetic, rounding to nearest even and saturating as the hardware does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memory.kv_layout import SCALE_BYTES
from runtime.kernels.fp8_kv import FP8_MAX, MIN_SCALE
from runtime.kernels.pdl import pdl_enabled, wait_and_release

_MAX: tl.constexpr = tl.constexpr(FP8_MAX)
_MIN_SCALE: tl.constexpr = tl.constexpr(MIN_SCALE)


@triton.jit
def fp8_decode(x, NATIVE: tl.constexpr):
    """fp32 values of e4m3 `x` (an fp8 tile, or its uint8 bits when not NATIVE). One return,
    as in fp8_encode: compiled Triton also builds the code after a constexpr branch's return."""
    if NATIVE:
        out = x.to(tl.float32)
    else:
        out = _e4m3_value(x)
    return out


@triton.jit
def _e4m3_value(x):
    """fp32 values of the uint8 e4m3 bit patterns `x`."""
    bits = x.to(tl.int32)
    exp = (bits >> 3) & 0xF
    man = (bits & 7).to(tl.float32)
    # Normal: (8 + m) * 2^(e - 10); subnormal (e = 0): m * 2^-9.
    normal = (8.0 + man) * tl.math.exp2((exp - 10).to(tl.float32))
    mag = tl.where(exp == 0, man * 0.001953125, normal)
    return tl.where((bits & 0x80) != 0, -mag, mag)


@triton.jit
def fp8_encode(x, dtype: tl.constexpr, NATIVE: tl.constexpr):
    """e4m3 of fp32 `x` in [-448, 448] (an fp8 tile, or uint8 bits when not NATIVE), rounded
    to nearest even. One return: compiled Triton types every return of a function alike, even
    those a constexpr branch never reaches."""
    if NATIVE:
        out = x.to(dtype)
    else:
        out = _e4m3_bits(x)
    return out


@triton.jit
def _e4m3_bits(x):
    """The e4m3 bit pattern of fp32 `x`, as uint8, for devices without a native fp8 type."""
    a = tl.abs(x)
    # Subnormals and zero: a * 2^9 is exact, then round half to even to an integer 0..8.
    sub = a * 512.0
    low = tl.floor(sub)
    frac = sub - low
    low_i = low.to(tl.int32)
    sub_bits = low_i + ((frac > 0.5) | ((frac == 0.5) & ((low_i & 1) == 1))).to(tl.int32)
    # Normals: exponent and 3 mantissa bits from the fp32 bits, round half to even (a carry
    # into the exponent is the right code too).
    f = a.to(tl.int32, bitcast=True)
    keep = ((f >> 23) - 120) * 8 + ((f >> 20) & 7)  # (e - 127 + 7) << 3 | top 3 mantissa bits
    rest = f & 0xFFFFF
    up = (rest > 0x80000) | ((rest == 0x80000) & ((keep & 1) == 1))
    norm_bits = tl.minimum(keep + up.to(tl.int32), 0x7E)  # 0x7E is 448, the largest
    mag = tl.where(a < 0.015625, sub_bits, norm_bits)  # 2^-6: the smallest normal
    sign = tl.where(x.to(tl.int32, bitcast=True) < 0, 0x80, 0)  # -0.0 keeps its sign, as torch
    return (mag | sign).to(tl.uint8)


@triton.jit
def _store_kv_fp8_kernel(
    K, V, KC, VC, KS, VS, SLOTS, num_tokens,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cp, stride_cs, stride_ch,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    PAGE_SIZE: tl.constexpr, NATIVE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    wait_and_release(PDL)
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    slots = tl.load(SLOTS + toks, mask=toks < num_tokens, other=-1).to(tl.int64)
    t_ok = slots >= 0  # a negative slot marks a padding token: nothing is written for it
    mask = t_ok[:, None] & (d < HEAD_DIM)[None, :]
    row = (slots // PAGE_SIZE) * stride_cp + (slots % PAGE_SIZE) * stride_cs + h * stride_ch
    dst = row[:, None] + d[None, :]
    t64 = toks.to(tl.int64)[:, None]
    _store_rows(K + t64 * stride_kt + h * stride_kh + d[None, :], KC, KS, dst, row, mask, t_ok,
                HEAD_DIM, NATIVE)  # fmt: skip
    _store_rows(V + t64 * stride_vt + h * stride_vh + d[None, :], VC, VS, dst, row, mask, t_ok,
                HEAD_DIM, NATIVE)  # fmt: skip


@triton.jit
def _store_rows(src, cache, scales, dst, row, mask, t_ok, HEAD_DIM: tl.constexpr,
                NATIVE: tl.constexpr):
    """Quantize a `[BLOCK_T, BLOCK_D]` tile of one head, one scale per token (row)."""
    x = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 1) / _MAX, _MIN_SCALE)  # (BLOCK_T,)
    q = tl.minimum(tl.maximum(x / scale[:, None], -_MAX), _MAX)
    tl.store(cache + dst, fp8_encode(q, cache.dtype.element_ty, NATIVE), mask=mask)
    tl.store(scales + (row + HEAD_DIM) // 4, scale, mask=t_ok)  # the fp32 word after the values


def fp8_views(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(values view `[..., head_dim]` as the kernels read it, the cache as fp32 words for the
    scales, native) of an fp8 cache view `[..., head_dim + 4]`."""
    head_dim = cache.shape[-1] - SCALE_BYTES
    assert head_dim % SCALE_BYTES == 0, "fp8 KV needs head_dim divisible by 4"
    native = cache.is_cuda
    values = cache[..., :head_dim]
    return (values if native else values.view(torch.uint8)), cache.view(torch.float32), native


def store_kv_fp8(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, slot_mapping: torch.Tensor, *, pdl: bool = True) -> None:
    """Quantize k, v `(T, Hkv, D)` per token and head into fp8 caches `[pages, page_size, Hkv,
    D + 4]` at `slot_mapping` (negative slots skipped); mutates only those slots."""
    num_tokens, kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    assert k_cache.stride() == v_cache.stride(), "k and v caches must share strides"
    assert k.stride(2) == 1 and v.stride(2) == 1, "contiguous head_dim"
    assert k_cache.shape[2:] == (kv_heads, head_dim + SCALE_BYTES), "cache rows are D + 4 bytes"
    kc, ks, native = fp8_views(k_cache)
    vc, vs, _ = fp8_views(v_cache)
    block_t = 16
    pdl = pdl_enabled(k.device, pdl)
    _store_kv_fp8_kernel[(triton.cdiv(num_tokens, block_t), kv_heads)](
        k, v, kc, vc, ks, vs, slot_mapping, num_tokens,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_T=block_t,
        PAGE_SIZE=k_cache.shape[1], NATIVE=native, PDL=pdl, num_warps=4, launch_pdl=pdl,
    )  # fmt: skip
