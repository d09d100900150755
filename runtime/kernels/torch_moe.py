"""The mixture-of-experts block in torch: expert activations and the routed expert sum.

Weights are stacked per expert in nn.Linear's layout: gate_up `(E, 2F, H)` = [gate | up] rows,
down `(E, H, F)`, optional biases `(E, 2F)`, `(E, H)`. Two ways to compute the same sum:

- few routed rows (decode): gather the chosen experts' weights and batch the matmuls; no host
  sync, so a decode step with it can be captured in a CUDA graph, and only the chosen experts'
  weights are read;
- many rows (prefill): sort the rows by expert and run each hit expert once over its rows
  (one host read of the per-expert counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

# Routed rows (tokens x top-k) up to which the gather path is used.
GATHER_MAX_ROWS = 16


@dataclass(frozen=True)
class ExpertActivation:
    """How an expert turns [gate | up] into its hidden activation.

    `silu`: silu(gate) * up (Qwen3-MoE). `swiglu_clamped` (gpt-oss): gate clamped above at
    `limit`, up clamped to +-limit, then (up + 1) * gate * sigmoid(alpha * gate).
    `silu_clamped` (DeepSeek-V4): the same clamps, then silu(gate) * up.
    """

    kind: str = "silu"
    alpha: float = 1.702
    limit: float = 7.0

    def __call__(self, gate_up: Tensor) -> Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        if self.kind == "silu":
            return F.silu(gate) * up
        if self.kind == "silu_clamped":
            gate = gate.clamp(max=self.limit)
            return F.silu(gate) * up.clamp(min=-self.limit, max=self.limit)
        assert self.kind == "swiglu_clamped", f"unknown expert activation {self.kind!r}"
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))


class ExpertWeights(Protocol):
    """What the MoE ops read from an experts module."""

    gate_up: Tensor  # (E, 2F, H)
    down: Tensor  # (E, H, F)
    gate_up_bias: Tensor | None  # (E, 2F)
    down_bias: Tensor | None  # (E, H)
    activation: ExpertActivation


def moe_reference(x: Tensor, topk_ids: Tensor, topk_weights: Tensor,
                  experts: ExpertWeights) -> Tensor:
    """`sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t])` for x `(T, H)`, in x's dtype."""
    if topk_ids.numel() <= GATHER_MAX_ROWS:
        return _gathered(x, topk_ids, topk_weights, experts)
    return _sorted(x, topk_ids, topk_weights, experts)


def _gathered(x, topk_ids, topk_weights, experts: ExpertWeights) -> Tensor:
    t, k = topk_ids.shape
    ids = topk_ids.reshape(-1)  # (T*k,)
    rows = x.repeat_interleave(k, dim=0).unsqueeze(-1)  # (T*k, H, 1)
    h = torch.bmm(experts.gate_up[ids], rows).squeeze(-1)  # (T*k, 2F)
    if experts.gate_up_bias is not None:
        h = h + experts.gate_up_bias[ids]
    h = experts.activation(h)
    out = torch.bmm(experts.down[ids], h.unsqueeze(-1)).squeeze(-1)  # (T*k, H)
    if experts.down_bias is not None:
        out = out + experts.down_bias[ids]
    out = out * topk_weights.reshape(-1, 1).to(out.dtype)
    return out.view(t, k, -1).sum(dim=1).to(x.dtype)


def _sorted(x, topk_ids, topk_weights, experts: ExpertWeights) -> Tensor:
    k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # routed rows grouped by expert
    counts = torch.bincount(flat, minlength=experts.gate_up.shape[0]).tolist()
    tokens = order // k
    weights = topk_weights.reshape(-1)[order]
    out = torch.zeros_like(x)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = tokens[start : start + n]
        h = F.linear(x[rows], experts.gate_up[e], _bias(experts.gate_up_bias, e))
        y = F.linear(experts.activation(h), experts.down[e], _bias(experts.down_bias, e))
        out.index_add_(0, rows, (y * weights[start : start + n, None].to(y.dtype)).to(x.dtype))
        start += n
    return out


def _bias(bias: Tensor | None, e: int) -> Tensor | None:
    return None if bias is None else bias[e]
