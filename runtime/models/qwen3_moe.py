"""Qwen3-MoE (`Qwen3MoeForCausalLM`, e.g. Qwen3-Coder-30B-A3B): Qwen3 attention (q/k norm)
with a routed-experts feed-forward on the sparse layers, a dense MLP on the others.

Parameter names follow transformers 5 (`mlp.gate.weight` for the router); the experts are
stacked (`mlp.experts.gate_up`, `mlp.experts.down`), filled by the loader from the hub's
per-expert tensors or transformers' stacked ones.
"""

from __future__ import annotations

from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.kernels.layer_ops import LayerOps
from runtime.kernels.torch_moe import ExpertActivation
from runtime.models.llama import MLP, CausalLM
from runtime.models.moe import Experts, TopKRouter, route_and_run


class Qwen3MoeBlock(nn.Module):
    """Softmax router over all experts, top k (renormalised when the config says so)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = TopKRouter(cfg, bias=False, softmax_then_topk=True)
        self.experts = Experts(cfg, ExpertActivation("silu"), bias=False)

    def forward(self, x: Tensor, ops: LayerOps) -> Tensor:
        return route_and_run(self.gate, self.experts, x, ops)


class Qwen3MoeForCausalLM(CausalLM):
    """CausalLM whose sparse layers use Qwen3MoeBlock."""

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer_idx: int) -> nn.Module:
        return Qwen3MoeBlock(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg)
