"""Batch-1 decode projections as one streaming pass over the weights, and SiLU * up in one kernel.

A decode step at batch 1 reads every weight once and does two flops per weight: the time is the
time to stream ~14 GB of a 7B model. `gemv` reads a weight `(N, K)` row-major in `[BLOCK_N,
BLOCK_K]` tiles, one program per BLOCK_N output rows, with no split-K pass and no extra
kernel for the bias or the activation: `act="silu_mul"` computes the input `silu(gate) * up`
from a fused gate/up output on the fly (transformers' bf16 rounding points: silu rounded, the
product rounded), so the MLP of one token is two kernels.

`silu_mul` is the same activation for any number of rows, as one kernel instead of two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime.kernels.pdl import pdl_enabled, wait_and_release


@dataclass(frozen=True)
class GemvConfig:
    """Tile shape of the GEMV: output rows per program, weights per row per step, warps."""

    block_n: int = 8
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 2


def default_gemv_config(n: int, k: int, device: torch.device) -> GemvConfig:
    """Tuned on an H200 (bench/gpu_kernels.py --tune gemv); small tiles for the interpreter.

    H200, Qwen2.5-7B's projections, weight GB/s read (cuBLAS in brackets): 8x512 tiles and 4
    warps: gate_up 4.24 TB/s [3.85], lm_head 4.53 [4.22], qkv 3.33 [3.01], o_proj 2.95 [2.20];
    long rows (down, K = 18,944) want 1,024 columns per step: 3.90 [3.19] against 3.08.
    """
    if device.type != "cuda":
        return GemvConfig(block_n=4, block_k=32, num_warps=1, num_stages=1)
    if k >= 8192:
        return GemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=2)
    return GemvConfig(block_n=8, block_k=512, num_warps=4, num_stages=2)


@triton.jit
def _silu_mul(g, u, dtype: tl.constexpr):
    """silu(g) * u with transformers' rounding: the silu rounded to dtype, then the product."""
    g = g.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    return (act * u.to(tl.float32)).to(dtype)


@triton.jit
def _gemv_kernel(
    X, W, B, Out, N, K, stride_w,
    HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    wait_and_release(PDL)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)  # out-of-range rows re-read row 0: no masks in the loop
    w_rows = W + rows.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    dt = W.dtype.element_ty
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            w = tl.load(w_rows + cols[None, :])
            if SILU_MUL:
                x = _silu_mul(tl.load(X + cols), tl.load(X + K + cols), dt)
            else:
                x = tl.load(X + cols)
        else:
            k_ok = cols < K
            w = tl.load(w_rows + cols[None, :], mask=k_ok[None, :], other=0.0)
            if SILU_MUL:
                g = tl.load(X + cols, mask=k_ok, other=0.0)
                x = _silu_mul(g, tl.load(X + K + cols, mask=k_ok, other=0.0), dt)
            else:
                x = tl.load(X + cols, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        # Like cuBLAS's epilogue: the bias joins the fp32 sum before the one rounding.
        out += tl.load(B + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(Out + rows, out.to(Out.dtype.element_ty), mask=row_ok)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         act: str | None = None, config: GemvConfig | None = None, pdl: bool = True
         ) -> torch.Tensor:
    """`x @ weight.T + bias` for one row x `(1, K)` (or `(1, 2K)` = [gate | up] with
    `act="silu_mul"`); weight `(N, K)` with contiguous rows. Returns `(1, N)` in x's dtype."""
    assert x.shape[0] == 1 and x.is_contiguous(), "gemv takes one contiguous row"
    assert weight.stride(1) == 1, "weight rows must be contiguous"
    n, k = weight.shape
    assert act in (None, "silu_mul"), f"unknown activation {act!r}"
    assert x.shape[1] == (2 * k if act else k), "x does not match the weight's columns"
    cfg = config or default_gemv_config(n, k, x.device)
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    pdl = pdl_enabled(x.device, pdl)
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, SILU_MUL=act == "silu_mul", EVEN_K=k % cfg.block_k == 0,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )  # fmt: skip
    return out


@triton.jit
def _silu_mul_kernel(X, Out, n, stride_x, BLOCK: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n
    g = tl.load(X + row * stride_x + cols, mask=ok, other=0.0)
    u = tl.load(X + row * stride_x + n + cols, mask=ok, other=0.0)
    tl.store(Out + row * n + cols, _silu_mul(g, u, Out.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` for gate_up `(T, 2F)` = [gate | up] per row; returns `(T, F)`."""
    t, two_f = gate_up.shape
    assert gate_up.stride(1) == 1, "rows must be contiguous"
    f = two_f // 2
    out = torch.empty((t, f), dtype=gate_up.dtype, device=gate_up.device)
    if t:
        block = 1024 if gate_up.is_cuda else 64
        _silu_mul_kernel[(triton.cdiv(f, block), t)](gate_up, out, f, gate_up.stride(0),
                                                     BLOCK=block, num_warps=4)
    return out
