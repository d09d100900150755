"""LayerOps: the operations every model family's layers call, one implementation per device.

A model never asks which device it runs on: its layers call `ctx.ops.add_norm`, `ctx.ops.rope`,
`ctx.ops.linear`, ... and the forward context carries the ops object chosen once, when the
engine is built (`layer_ops(device)`). `TorchOps` serves the CPU (and is the reference every
other implementation is tested against); `TritonOps` (triton_ops.py, imported only when chosen)
serves CUDA. Attention itself stays behind the `AttentionBackend` contract (backend.py), which
the context calls with the layer's window and sinks.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.kernels.torch_moe import ExpertWeights, moe_reference
from runtime.rope import apply_rotary


@dataclass(frozen=True)
class OpsOptions:
    """A/B switches for benchmarks and tests; change them before CUDA graphs are captured."""

    decode_gemv: bool = True  # batch-1 projections through the streaming GEMV (else cuBLAS)
    pdl: bool = True  # programmatic dependent launch of the decode-path kernels (Hopper+)


class LayerOps(ABC):
    """The layer operations, for one device.

    Contract: every method returns its result and mutates nothing the caller still reads,
    except `rope`, which may rotate `x` in place (the caller uses the returned tensor and never
    the old values of x). Norm modules passed in expose `weight`, `eps`, `weight_in_fp32` and
    are callable (the plain RMSNorm). Results equal TorchOps' up to summation order.
    """

    name: str = "abstract"

    def __init__(self, options: OpsOptions | None = None):
        self.options = options or OpsOptions()

    def with_options(self, **changes: bool) -> LayerOps:
        """A copy of these ops with some options changed (e.g. `pdl=False`)."""
        return type(self)(dataclasses.replace(self.options, **changes))

    @abstractmethod
    def add_norm(self, x: Tensor, residual: Tensor | None, norm: nn.Module
                 ) -> tuple[Tensor, Tensor]:
        """`(norm(residual + x), residual + x)`; with no residual yet, `(norm(x), x)`."""

    @abstractmethod
    def linear(self, x: Tensor, module: nn.Module) -> Tensor:
        """`module(x)` for a Linear-like module (it may hold packed CPU weights)."""

    @abstractmethod
    def matmul(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """`x @ weight.T + bias`."""

    @abstractmethod
    def rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x `(T, H, D)` rotated by cos/sin `(T, D/2)` (HF's rotate-half), possibly in place."""

    @abstractmethod
    def gated_mlp(self, gate_up: Tensor, down: nn.Linear) -> Tensor:
        """`down(silu(gate) * up)` for gate_up `(T, 2F)` = [gate | up]."""

    @abstractmethod
    def moe(self, x: Tensor, topk_ids: Tensor, topk_weights: Tensor,
            experts: ExpertWeights) -> Tensor:
        """Sum over k of `topk_weights[:, k] * expert_{topk_ids[:, k]}(x)`; x `(T, H)`."""


class TorchOps(LayerOps):
    """Plain torch: the CPU path and the reference."""

    name = "torch"

    def add_norm(self, x, residual, norm):
        if residual is not None:
            x = residual + x
        return norm(x), x

    def linear(self, x, module):
        return module(x)

    def matmul(self, x, weight, bias=None):
        return F.linear(x, weight, bias)

    def rope(self, x, cos, sin):
        return apply_rotary(x, cos, sin)

    def gated_mlp(self, gate_up, down):
        gate, up = gate_up.chunk(2, dim=-1)
        return down(F.silu(gate) * up)

    def moe(self, x, topk_ids, topk_weights, experts):
        return moe_reference(x, topk_ids, topk_weights, experts)


def layer_ops(device: torch.device | str, options: OpsOptions | None = None) -> LayerOps:
    """The ops for `device`: Triton kernels on CUDA, torch elsewhere."""
    if torch.device(device).type == "cuda":
        from runtime.kernels.triton_ops import TritonOps  # Triton only when chosen

        return TritonOps(options)
    return TorchOps(options)
