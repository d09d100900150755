"""The contract of multi-head latent attention (MLA) over paged latent KV, and its registry.

MLA (DeepSeek-V2/V3, GLM-4.7-Flash) caches one row per token and layer: the normalised KV
latent `c` (kv_lora_rank values), then the rotated rope key shared by every head
(qk_rope_head_dim values). Keys and values of head h are `W_uk[h] c` and `W_uv[h] c`, so
attention can run two ways with the same result:

- expanded (prefill / extend): up-project every cached latent to per-head keys and values,
  then causal attention of `[q_nope | q_rope]` over `[k_nope | k_rope]`;
- absorbed (decode): fold `W_uk` into the query (`q_lat = q_nope W_uk`, kv_lora_rank wide),
  score against the latents directly, sum the latents by the probabilities and up-project the
  result once with `W_uv`: per step it reads the cache once and never materialises K or V.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from runtime.kernels.backend import AttentionMetadata


class LatentAttentionBackend(ABC):
    """Stores latents into pages and attends over them.

    Contract: `cache` is one layer's view `[num_pages, page_size, 1, latent_dim]` (a strided
    view into the page pool; never reallocated). `store` mutates only the slots of
    `meta.slot_mapping`; the attention methods mutate nothing and return `(T, H, v_head_dim)`
    in q's dtype, causal and end-aligned as AttentionMetadata defines. `w_kv` is kv_b_proj's
    weight viewed `(H, qk_nope_head_dim + v_head_dim, kv_lora_rank)`.
    """

    name: str = "abstract"

    @abstractmethod
    def store(self, cache: torch.Tensor, latent: torch.Tensor, meta: AttentionMetadata) -> None:
        """Write `latent` `(T, latent_dim)` into the new tokens' slots."""

    @abstractmethod
    def extend(self, q_nope: torch.Tensor, q_rope: torch.Tensor, cache: torch.Tensor,
               w_kv: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Expanded form: q_nope `(T, H, Dn)`, q_rope `(T, H, Dr)`."""

    @abstractmethod
    def decode(self, q_nope: torch.Tensor, q_rope: torch.Tensor, cache: torch.Tensor,
               w_kv: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Absorbed form, for one query per sequence."""


_INSTANCES: dict[str, LatentAttentionBackend] = {}


def latent_backend(attention_backend: str) -> LatentAttentionBackend:
    """The latent backend beside a regular attention backend: the Triton kernel next to the
    Triton backend (its decode replays in CUDA graphs), the torch reference otherwise.
    Each is imported when first chosen."""
    name = "triton" if attention_backend == "triton" else "torch"
    if name not in _INSTANCES:
        if name == "triton":
            from runtime.kernels.triton_mla import TritonLatentBackend

            _INSTANCES[name] = TritonLatentBackend()
        else:
            from runtime.kernels.torch_mla import TorchLatentBackend

            _INSTANCES[name] = TorchLatentBackend()
    return _INSTANCES[name]
