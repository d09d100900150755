"""TritonOps: the layer ops on CUDA (fused add+RMSNorm, in-place RoPE, batch-1 GEMV, SiLU-mul).

Each method makes the same kernel calls the dense model made inline before the ops object
existed, under the same conditions, so the GPU path is bit-identical to it. The MoE block
runs the fused grouped-GEMM kernels (triton_moe.py).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from runtime.kernels.layer_ops import TorchOps
from runtime.kernels.triton_linear import gemv, silu_mul
from runtime.kernels.triton_moe import fused_moe
from runtime.kernels.triton_norm import add_rmsnorm, rope_


class TritonOps(TorchOps):
    """Triton kernels on CUDA; options `decode_gemv` and `pdl` switch them for A/B runs."""

    name = "triton"

    def add_norm(self, x, residual, norm):
        # The kernel rounds x * rsqrt(...) to x's dtype before the weight (Llama's order).
        if x.is_cuda and x.dim() == 2 and not norm.weight_in_fp32:
            return add_rmsnorm(x, norm.weight, norm.eps, residual, pdl=self.options.pdl)
        return super().add_norm(x, residual, norm)

    def linear(self, x, module):
        # Off the GEMV path the module itself runs.
        if self._gemv(x):
            return self.matmul(x, module.weight, module.bias)
        return module(x)

    def matmul(self, x, weight, bias=None):
        if self._gemv(x):
            return gemv(x, weight, bias, pdl=self.options.pdl)
        return F.linear(x, weight, bias)

    def rope(self, x, cos, sin):
        if x.is_cuda:
            return rope_(x, cos, sin, pdl=self.options.pdl)
        return super().rope(x, cos, sin)

    def gated_mlp(self, gate_up, down):
        if not gate_up.is_cuda:
            return super().gated_mlp(gate_up, down)
        if self._gemv(gate_up):
            return gemv(gate_up, down.weight, act="silu_mul", pdl=self.options.pdl)
        return down(silu_mul(gate_up))

    def moe(self, x, topk_ids, topk_weights, experts):
        if not x.is_cuda:
            return super().moe(x, topk_ids, topk_weights, experts)
        return fused_moe(x, topk_ids, topk_weights, experts)

    def _gemv(self, x: Tensor) -> bool:
        return self.options.decode_gemv and x.is_cuda and x.shape[0] == 1
