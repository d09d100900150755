"""Fused elementwise kernels for the GPU decode path: residual add + RMSNorm, and RoPE.

A decode step of a 28-layer model launched about 1,100 small elementwise kernels (fp32 RMSNorm,
casts, rotate-half, residual adds): 1.7 ms of a 7.4 ms step on the H200 (profiled). These
kernels do each of those jobs in one launch, with transformers' rounding points: the residual
sum is rounded to the activation dtype before the norm, the normalised value is rounded before
the weight multiplies it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime.kernels.pdl import pdl_enabled, wait_and_release


@triton.jit
def _add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
                        stride_x, stride_r, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
    wait_and_release(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(res_out_ptr.dtype.element_ty)  # the residual stream's own rounding
        tl.store(res_out_ptr + row * n_cols + cols, s, mask=mask)
        x = s.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    y = (x * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (w * y).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                residual: torch.Tensor | None = None, *, pdl: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(norm(x + residual) * weight, x + residual)` for x `(T, H)`; without a residual the
    second value is x itself. Nothing is written in place."""
    t, n = x.shape
    out = torch.empty((t, n), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else x
    if t:
        _add_rmsnorm_kernel[(t,)](
            x, residual if residual is not None else x, weight, out, res_out, n, eps,
            x.stride(0), (residual if residual is not None else x).stride(0),
            HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(n),
            PDL=pdl_enabled(x.device, pdl), launch_pdl=pdl_enabled(x.device, pdl),
        )  # fmt: skip
    return out, res_out


@triton.jit(do_not_specialize=["n_tokens"])
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, n_tokens, stride_t, stride_h, half, cs_stride,
                 BLOCK_T: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_and_release(PDL)
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    mask = (toks < n_tokens)[:, None] & (offs < half)[None, :]
    t64 = toks.to(tl.int64)[:, None]
    base = x_ptr + t64 * stride_t + h * stride_h + offs[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + half, mask=mask, other=0.0).to(tl.float32)
    cs = t64 * cs_stride + offs[None, :]
    c = tl.load(cos_ptr + cs, mask=mask, other=0.0)
    s = tl.load(sin_ptr + cs, mask=mask, other=0.0)
    dt = x_ptr.dtype.element_ty
    tl.store(base, (x1 * c - x2 * s).to(dt), mask=mask)
    tl.store(base + half, (x2 * c + x1 * s).to(dt), mask=mask)


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, pdl: bool = True
          ) -> torch.Tensor:
    """Rotate x `(T, H, D)` in place by cos/sin `(T, D/2)` fp32 (HF's rotate-half); returns x.

    Rows may be strided (views into a fused qkv output); each head's D values must be
    contiguous. A program rotates one head of up to 16 tokens (a prefill chunk of 16K tokens
    is 1K x heads programs, not 16K x heads)."""
    t, h, d = x.shape
    assert x.stride(2) == 1, "head values must be contiguous"
    if t and h:
        cos, sin = cos.contiguous(), sin.contiguous()
        pdl = pdl_enabled(x.device, pdl)
        block_t = min(16, triton.next_power_of_2(t))
        _rope_kernel[(triton.cdiv(t, block_t), h)](
            x, cos, sin, t, x.stride(0), x.stride(1), d // 2, cos.stride(0),
            BLOCK_T=block_t, BLOCK=triton.next_power_of_2(d // 2), PDL=pdl, launch_pdl=pdl,
        )  # fmt: skip
    return x
