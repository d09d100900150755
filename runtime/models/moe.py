"""The routed-experts feed-forward shared by the MoE families: router, top-k, stacked experts.

The router scores every expert, keeps the top k per token and weights them by the family's
rule; the experts run through `ops.moe` (runtime/kernels/layer_ops.py). Expert weights are
stacked in nn.Linear's layout (see runtime/kernels/torch_moe.py); the loaders convert each
checkpoint's layout to it (runtime/loader/experts.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.kernels.layer_ops import LayerOps
from runtime.kernels.torch_moe import ExpertActivation


class TopKRouter(nn.Module):
    """Router logits, top-k experts per token and their weights.

    `softmax_then_topk` (Qwen3-MoE): softmax over all experts in fp32, top k, renormalised
    when `norm_topk_prob`. Otherwise (gpt-oss): top k of the logits, softmax over those k.
    Weights come back in the logits' dtype, as transformers returns them."""

    def __init__(self, cfg: ModelConfig, *, bias: bool, softmax_then_topk: bool):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.softmax_then_topk = softmax_then_topk
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.bias = nn.Parameter(torch.empty(cfg.num_experts)) if bias else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x `(T, H)` -> expert ids `(T, k)` int64 and their weights `(T, k)`."""
        logits = F.linear(x, self.weight, self.bias)  # (T, E)
        if not self.softmax_then_topk:
            top, ids = torch.topk(logits, self.top_k, dim=-1)
            return ids, torch.softmax(top, dim=-1)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        top, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return ids, top.to(logits.dtype)


class Experts(nn.Module):
    """E experts' weights, stacked: gate_up `(E, 2F, H)` = [gate | up] rows, down `(E, H, F)`,
    and optional biases; `activation` turns [gate | up] into the hidden activation."""

    def __init__(self, cfg: ModelConfig, activation: ExpertActivation, bias: bool):
        super().__init__()
        e, h, f = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.activation = activation
        self.gate_up = nn.Parameter(torch.empty(e, 2 * f, h))
        self.down = nn.Parameter(torch.empty(e, h, f))
        self.gate_up_bias = nn.Parameter(torch.empty(e, 2 * f)) if bias else None
        self.down_bias = nn.Parameter(torch.empty(e, h)) if bias else None


def route_and_run(router: TopKRouter, experts: Experts, x: Tensor, ops: LayerOps) -> Tensor:
    """The MoE block: route x `(T, H)`, then the weighted sum of the chosen experts' outputs."""
    ids, weights = router(x)
    return ops.moe(x, ids, weights, experts)
