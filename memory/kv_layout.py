"""The shape of one KV page: all layers of `page_size` tokens, contiguous."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVLayout:
    """One page is `[num_layers, 2, page_size, num_kv_heads, head_dim]` of `dtype`, contiguous.

    A page is therefore one copy between tiers and one extent on disk; attention kernels see
    per-layer strided views `[num_pages, page_size, num_kv_heads, head_dim]` of the pool.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype

    @property
    def page_shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, self.page_size, self.num_kv_heads, self.head_dim)

    @property
    def page_numel(self) -> int:
        n = 1
        for s in self.page_shape:
            n *= s
        return n

    @property
    def page_bytes(self) -> int:
        return self.page_numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def bytes_per_token(self) -> int:
        return self.page_bytes // self.page_size

    def describe(self) -> str:
        """A stable string for fingerprints (changes whenever the bytes of a page would)."""
        dt = str(self.dtype).removeprefix("torch.")
        return f"L{self.num_layers}xKV{self.num_kv_heads}xD{self.head_dim}xP{self.page_size}:{dt}"
