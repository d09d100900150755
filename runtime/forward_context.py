"""Per-forward state handed to the model: layer ops, attention backend, KV views, metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from runtime.kernels.backend import AttentionBackend, AttentionMetadata
from runtime.kernels.layer_ops import LayerOps

if TYPE_CHECKING:
    from runtime.models.recurrent_state import BoundStates


@dataclass
class ForwardContext:
    """Bound for one forward pass; layers call `ops` for their operations and `attend`."""

    backend: AttentionBackend
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k_cache, v_cache) views
    meta: AttentionMetadata
    ops: LayerOps  # chosen once per device by whoever builds the model runner
    states: BoundStates | None = None  # hybrid models' linear-layer states (recurrent_state.py)

    def attend(self, layer: int, q, k, v, scale: float, *, window: int | None = None,
               sinks: torch.Tensor | None = None) -> torch.Tensor:
        """Store this layer's new K/V, then attend. q `(T, Hq, D)`, k/v `(T, Hkv, D)`;
        `window` and `sinks` as the AttentionBackend contract defines them."""
        k_cache, v_cache = self.kv[layer]
        self.backend.store_kv(k_cache, v_cache, k, v, self.meta)
        if window is None and sinks is None:
            return self.backend.forward(q, k_cache, v_cache, self.meta, scale)
        return self.backend.forward(q, k_cache, v_cache, self.meta, scale, window=window,
                                    sinks=sinks)
