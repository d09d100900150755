"""Per-forward state handed to the model: the attention backend, the KV views, the metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.kernels.backend import AttentionBackend, AttentionMetadata


@dataclass
class ForwardContext:
    """Bound for one forward pass; the model's attention layers call `attend`."""

    backend: AttentionBackend
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k_cache, v_cache) views
    meta: AttentionMetadata

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        """Store this layer's new K/V, then attend. q `(T, Hq, D)`, k/v `(T, Hkv, D)`."""
        k_cache, v_cache = self.kv[layer]
        self.backend.store_kv(k_cache, v_cache, k, v, self.meta)
        return self.backend.forward(q, k_cache, v_cache, self.meta, scale)
