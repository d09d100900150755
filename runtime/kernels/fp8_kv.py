"""fp8 (e4m3) KV pages: each head's row is its values, then the fp32 scale they were stored with.

A token's keys (or values) for one KV head are quantized on their own: scale = amax / 448
(e4m3's largest normal), value = x / scale rounded to e4m3. Scaling per token and head, not per
page, means a store never rescales what an earlier forward wrote: a page's bytes depend only
on its tokens, whatever the chunking, and a store touches nothing but its own slots. The scale
costs 4 bytes beside `head_dim` (3% at 128); the layout is memory/kv_layout.py's.

A cache view `[num_pages, page_size, kv_heads, head_dim + 4]` (fp8) splits into the values
`[..., :head_dim]` and the scales `[..., head_dim:].view(float32)` `[num_pages, page_size,
kv_heads]`; both are strided views into the pool.
"""

from __future__ import annotations

import torch

from memory.kv_layout import FP8_KV, SCALE_BYTES

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
MIN_SCALE = 1e-12  # an all-zero row stores zeros, not NaN


def is_fp8(cache: torch.Tensor) -> bool:
    """Whether a cache view holds fp8 rows with scales."""
    return cache.dtype == FP8_KV


def split_fp8(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values `[..., head_dim]` fp8, scales `[...]` fp32) views of an fp8 cache view."""
    head_dim = cache.shape[-1] - SCALE_BYTES
    scales = cache[..., head_dim:].view(torch.float32).squeeze(-1)
    return cache[..., :head_dim], scales


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x `(..., D)` -> (fp8 values `(..., D)`, fp32 scales `(...)`), one scale per row."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1) / FP8_MAX).clamp(min=MIN_SCALE)
    # Rounding can put amax / scale a hair above 448, which would convert to NaN.
    q = (xf / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX)
    return q.to(FP8_KV), scale


def dequantize(values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8 values `(..., D)` times their row scales `(...)`, in `dtype`."""
    return (values.float() * scales.unsqueeze(-1)).to(dtype)
