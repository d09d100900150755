"""Where the kernel tests run, and what fp32 agreement they can ask there.

Compiled on a CUDA GPU when the machine has one, else in Triton's interpreter on the CPU (the
kernels' conftest sets TRITON_INTERPRET). The GPU's fp32 `tl.dot` is tf32 (10 mantissa bits),
so a comparison exact to 1e-5 in the interpreter allows 2e-3 there.
"""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fp32_tol(cpu: float = 1e-5, gpu: float = 2e-3) -> float:
    """The relative error an fp32 kernel comparison allows on this machine's device."""
    return cpu if DEVICE == "cpu" else max(cpu, gpu)
