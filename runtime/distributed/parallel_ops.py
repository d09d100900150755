"""ParallelOps: a device's layer ops with the tensor-parallel collectives after the matmuls.

The model code stays the one-GPU code: `ops.linear(x, o_proj)` and `ops.gated_mlp(.., down)`
return partial sums on each rank for the modules TensorSplit marked `tp_reduce` (all-reduced
here, then their bias added once), and `ops.linear(x, lm_head)` returns this rank's vocabulary
columns for a head marked `tp_gather` (gathered here into the whole vocabulary).
"""

from __future__ import annotations

from torch import Tensor, nn

from runtime.distributed.group import RankGroup
from runtime.kernels.layer_ops import LayerOps


class ParallelOps(LayerOps):
    """`inner`'s operations (TorchOps, TritonOps), with the group's collectives added."""

    def __init__(self, inner: LayerOps, group: RankGroup):
        super().__init__(inner.options)
        self.inner = inner
        self.group = group
        self.name = f"tp{group.world}:{inner.name}"

    def with_options(self, **changes: bool) -> LayerOps:
        return ParallelOps(self.inner.with_options(**changes), self.group)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # device-specific extras of the inner ops

    def add_norm(self, x, residual, norm):
        return self.inner.add_norm(x, residual, norm)

    def linear(self, x: Tensor, module: nn.Module) -> Tensor:
        return self._combine(self.inner.linear(x, module), module)

    def matmul(self, x, weight, bias=None):
        return self.inner.matmul(x, weight, bias)

    def rope(self, x, cos, sin):
        return self.inner.rope(x, cos, sin)

    def gated_mlp(self, gate_up: Tensor, down: nn.Module) -> Tensor:
        return self._combine(self.inner.gated_mlp(gate_up, down), down)

    def moe(self, x, topk_ids, topk_weights, experts):
        return self.inner.moe(x, topk_ids, topk_weights, experts)

    def _combine(self, out: Tensor, module: nn.Module) -> Tensor:
        if getattr(module, "tp_reduce", False):
            out = self.group.all_reduce(out)
            bias = module.row_bias
            return out if bias is None else out + bias
        sizes = getattr(module, "tp_gather", None)
        if sizes is not None:
            return self.group.gather_last(out, sizes)
        return out
