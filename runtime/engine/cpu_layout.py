"""Weights laid out for the CPU: linears through oneDNN with its own weight format.

At batch 1 a decode step is one matrix-vector product per weight, bound by how fast the weights
stream from memory. On the 2-core dev VM (AVX-512) oneDNN's linear reads them at 36-52 GB/s
where torch's default GEMV reaches 15-26 GB/s, and a 512-token prefill chunk runs about 1.8x
faster (measured), so decode and prefill are about that much faster.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
_LINEAR = torch.ops.mkldnn._linear_pointwise.default  # resolved once: it runs per layer


class OneDnnLinear(nn.Module):
    """A Linear whose weight oneDNN has packed for itself; dense in, dense out, no copies."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features = weight.shape[0]
        # Packed for batch 1 (decode); prefill's larger batches still beat the default path.
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, 1))
        self.register_buffer("bias", None if bias is None else bias.to(weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return _LINEAR(x, self.weight, self.bias, "none", [], "")


def use_onednn(model: nn.Module) -> bool:
    """Swap every Linear (and a tied head) for oneDNN ones, one matrix at a time.

    For serving only, after the weights are loaded. Returns False (and changes nothing) where
    oneDNN cannot serve the weights' dtype or device."""
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype not in (torch.float32, torch.bfloat16):
        return False
    if not torch.backends.mkldnn.is_available():
        log.info("oneDNN is not available: linears stay on torch's default CPU path")
        return False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, OneDnnLinear(child.weight.data, _bias(child)))
    head = getattr(model, "lm_head", None)
    if head is None and hasattr(model, "packed_head") and model.packed_head is None:
        # The tied head is the embedding table: the lookup needs it dense, the logits want it
        # packed, so the packed copy costs one more embedding's worth of memory. (A GGUF's
        # loader avoids that: its lookups read the file, runtime/loader/gguf.py.)
        model.packed_head = OneDnnLinear(model.model.embed_tokens.weight.data, None)
    release_freed_memory()
    return True


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc keeps them after the load's and the
    fusion's temporaries are freed: about 40 MB for SmolLM2). No-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is unavailable: freed heap pages stay with the process")


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.data
