"""gpt-oss (`GptOssForCausalLM`, 20b / 120b): biased q/k/v/o, learned attention sinks, sliding
window (128) on alternate layers, and routed experts with biases and a clamped SwiGLU.

The attention variants come from the config (runtime/models/llama.py's Attention reads the
layer's window and creates `sinks`); RMSNorm multiplies by its weight in fp32. Parameter
names follow transformers (`mlp.router.weight`, `self_attn.sinks`); the stacked experts are
ours (`mlp.experts.gate_up` with gate and up de-interleaved, in nn.Linear's layout): the
loader converts the checkpoint's interleaved, transposed or MXFP4 tensors to them.
"""

from __future__ import annotations

from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.kernels.layer_ops import LayerOps
from runtime.kernels.torch_moe import ExpertActivation
from runtime.models.llama import CausalLM
from runtime.models.moe import Experts, TopKRouter, route_and_run


class GptOssBlock(nn.Module):
    """Biased router, softmax over the top-k logits; biased experts, clamped SwiGLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.router = TopKRouter(cfg, bias=True, softmax_then_topk=False)
        activation = ExpertActivation("swiglu_clamped", cfg.swiglu_alpha, cfg.swiglu_limit)
        self.experts = Experts(cfg, activation, bias=True)

    def forward(self, x: Tensor, ops: LayerOps) -> Tensor:
        return route_and_run(self.router, self.experts, x, ops)


class GptOssForCausalLM(CausalLM):
    """CausalLM with GptOssBlock on every layer."""

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer_idx: int) -> nn.Module:
        return GptOssBlock(cfg)
