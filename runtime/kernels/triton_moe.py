"""Fused mixture-of-experts in Triton: routed rows sorted by expert, one grouped GEMM a projection.

The T x k routed rows (token, choice) are sorted by expert and each expert's run padded to a
multiple of BLOCK_M (`align_routes`, device ops only: no host sync, so a decode step with it
can be captured in a CUDA graph; the grid is an upper bound and surplus programs return).
Then two launches:

- gate/up: each program multiplies BLOCK_M rows of one expert by a BLOCK_N slice of that
  expert's gate rows and the matching up rows, adds the biases and applies the activation
  (SiLU * up, or gpt-oss's clamped SwiGLU) before writing `(T*k, F)`;
- down: the same rows of the activation times the expert's down rows, plus bias, times the
  routing weight, written per routed row `(T*k, H)`; the k rows of a token are summed after.

Only experts that received a row are read, so a batch-1 decode step reads k experts' weights.
Weights are our stacked layout (runtime/kernels/torch_moe.py): gate_up `(E, 2F, H)`, down
`(E, H, F)`, nn.Linear-style rows with contiguous columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from runtime.kernels.torch_moe import ExpertWeights

_ACTIVATIONS = {"silu": 0, "swiglu_clamped": 1, "silu_clamped": 2}


@dataclass(frozen=True)
class MoeConfig:
    """Tile shape of both grouped GEMMs."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2


def default_moe_config(device: torch.device, routed: int) -> MoeConfig:
    """Small tiles in the interpreter; on CUDA BLOCK_M grows with the routed rows (decode has
    k rows, one per expert: a 16-row tile is the smallest tl.dot takes)."""
    if device.type != "cuda":
        return MoeConfig(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
    return MoeConfig(block_m=16 if routed <= 256 else 64, block_n=128, block_k=64,
                     num_warps=4 if routed <= 256 else 8, num_stages=3)  # fmt: skip


def align_routes(topk_ids: Tensor, num_experts: int, block_m: int) -> tuple[Tensor, Tensor, int]:
    """(rows `(max_blocks * block_m,)` int32: routed-row indices sorted by expert, each expert's
    run padded with -1 to a multiple of block_m; experts `(max_blocks,)` int32: the expert of
    each block, num_experts past the last; max_blocks: an upper bound on the blocks)."""
    flat = topk_ids.reshape(-1)
    routed = flat.numel()
    max_blocks = triton.cdiv(routed, block_m) + min(num_experts, routed)
    order = torch.argsort(flat, stable=True)
    # Not bincount: on CUDA it reads the largest id back to the host (no graph capture).
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    first = torch.cumsum(counts, 0) - counts  # sorted position of each expert's first row
    sorted_experts = flat[order]
    rank = torch.arange(routed, device=flat.device) - first[sorted_experts]
    rows = torch.full((max_blocks * block_m,), -1, dtype=torch.int32, device=flat.device)
    rows[starts[sorted_experts] + rank] = order.to(torch.int32)
    block_starts = torch.arange(max_blocks, device=flat.device) * block_m
    experts = torch.searchsorted(ends, block_starts, right=True).to(torch.int32)
    return rows, experts, max_blocks


@triton.jit
def _activate(gate, up, ACT: tl.constexpr, alpha, limit):
    if ACT == 0:
        return gate / (1.0 + tl.exp(-gate)) * up
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    if ACT == 2:  # DeepSeek-V4: the clamps, then plain SiLU
        return gate / (1.0 + tl.exp(-gate)) * up
    return (up + 1.0) * (gate / (1.0 + tl.exp(-gate * alpha)))


@triton.jit
def _block_rows(EXPERTS, ROWS, BLOCK_M: tl.constexpr):
    """This program's expert (num_experts past the last block), routed rows and their mask."""
    block = tl.program_id(0)
    routed = tl.load(ROWS + block * BLOCK_M + tl.arange(0, BLOCK_M))
    return tl.load(EXPERTS + block).to(tl.int64), routed, routed >= 0


@triton.jit
def _gate_up_kernel(
    X, W, B, Out, ROWS, EXPERTS,
    top_k, n_cols, k_dim, num_experts, alpha, limit,
    stride_xt, stride_we, stride_wn, stride_be, stride_ot,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    e, routed, row_ok = _block_rows(EXPERTS, ROWS, BLOCK_M)
    if e >= num_experts:
        return
    tok = tl.where(row_ok, routed // top_k, 0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    gate_rows = W + e * stride_we + cols.to(tl.int64)[None, :] * stride_wn  # (1, BLOCK_N)
    up_rows = gate_rows + n_cols * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_dim
        x = tl.load(X + tok[:, None] * stride_xt + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
        w_mask = k_ok[:, None] & col_ok[None, :]
        wg = tl.load(gate_rows + ks[:, None], mask=w_mask, other=0.0)  # (BLOCK_K, BLOCK_N)
        wu = tl.load(up_rows + ks[:, None], mask=w_mask, other=0.0)
        acc_g = tl.dot(x, wg, acc_g)
        acc_u = tl.dot(x, wu, acc_u)
    if HAS_BIAS:
        bias = B + e * stride_be + cols
        acc_g += tl.load(bias, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(bias + n_cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    h = _activate(acc_g, acc_u, ACT, alpha, limit)
    out = Out + tl.where(row_ok, routed, 0).to(tl.int64)[:, None] * stride_ot + cols[None, :]
    tl.store(out, h.to(Out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    H, W, B, RW, Out, ROWS, EXPERTS,
    n_cols, k_dim, num_experts,
    stride_ht, stride_we, stride_wn, stride_be, stride_ot,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    e, routed, row_ok = _block_rows(EXPERTS, ROWS, BLOCK_M)
    if e >= num_experts:
        return
    r64 = tl.where(row_ok, routed, 0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w_rows = W + e * stride_we + cols.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_dim
        h = tl.load(H + r64[:, None] * stride_ht + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
        w = tl.load(w_rows + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(h, w, acc)
    if HAS_BIAS:
        acc += tl.load(B + e * stride_be + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.load(RW + r64, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    out = Out + r64[:, None] * stride_ot + cols[None, :]
    tl.store(out, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def fused_moe(x: Tensor, topk_ids: Tensor, topk_weights: Tensor, experts: ExpertWeights,
              config: MoeConfig | None = None) -> Tensor:
    """`sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t])` for x `(T, H)`, in x's dtype;
    the same contract as torch_moe.moe_reference."""
    t, hidden = x.shape
    top_k = topk_ids.shape[1]
    num_experts, two_f, _ = experts.gate_up.shape
    f = two_f // 2
    act = experts.activation
    assert act.kind in _ACTIVATIONS, f"unknown expert activation {act.kind!r}"
    assert x.stride(1) == 1 and experts.gate_up.stride(2) == 1 and experts.down.stride(2) == 1
    routed = t * top_k
    cfg = config or default_moe_config(x.device, routed)
    if routed == 0:
        return torch.zeros_like(x)
    rows, block_experts, max_blocks = align_routes(topk_ids, num_experts, cfg.block_m)
    h = torch.empty((routed, f), dtype=x.dtype, device=x.device)
    gu_bias, down_bias = experts.gate_up_bias, experts.down_bias
    _gate_up_kernel[(max_blocks, triton.cdiv(f, cfg.block_n))](
        x, experts.gate_up, gu_bias if gu_bias is not None else x, h, rows, block_experts,
        top_k, f, hidden, num_experts, act.alpha, act.limit,
        x.stride(0), experts.gate_up.stride(0), experts.gate_up.stride(1),
        gu_bias.stride(0) if gu_bias is not None else 0, h.stride(0),
        HAS_BIAS=gu_bias is not None, ACT=_ACTIVATIONS[act.kind],
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    y = torch.empty((routed, hidden), dtype=x.dtype, device=x.device)
    weights = topk_weights.reshape(-1).contiguous()
    _down_kernel[(max_blocks, triton.cdiv(hidden, cfg.block_n))](
        h, experts.down, down_bias if down_bias is not None else x, weights, y, rows,
        block_experts, hidden, f, num_experts,
        h.stride(0), experts.down.stride(0), experts.down.stride(1),
        down_bias.stride(0) if down_bias is not None else 0, y.stride(0),
        HAS_BIAS=down_bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return y.view(t, top_k, hidden).sum(dim=1)
