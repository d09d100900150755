"""The shape of one KV page: all layers of `page_size` tokens, contiguous."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_KV = torch.float8_e4m3fn
SCALE_BYTES = 4  # an fp32 scale per token and KV head, after its head_dim fp8 values


@dataclass(frozen=True)
class KVLayout:
    """One page is `[num_layers, 2, page_size, num_kv_heads, head_dim]` of `dtype`, contiguous.

    A page is therefore one copy between tiers and one extent on disk; attention kernels see
    per-layer strided views `[num_pages, page_size, num_kv_heads, head_dim]` of the pool.

    With `dtype` fp8 (e4m3) each head's row is `head_dim + 4` bytes: the values, then the fp32
    scale they were quantized with (one per token and KV head; runtime/kernels/fp8_kv.py), so
    scales travel inside the page through every tier.

    `planes` is 2 (keys, values) for attention. Latent and compressed attention keep one
    plane (`planes=1`, `num_kv_heads=1`) whose rows are the model's per-token cache rows: MLA's
    latent (kv_lora_rank + rope dims), DeepSeek-V4's window key, compressor inputs and entries.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype
    planes: int = 2

    @property
    def scaled(self) -> bool:
        """Whether values are fp8 with a scale stored beside each head's row."""
        return self.dtype == FP8_KV

    @property
    def row_dim(self) -> int:
        """Elements of one head's row in a page: head_dim, plus the scale's bytes for fp8."""
        return self.head_dim + (SCALE_BYTES if self.scaled else 0)

    @property
    def page_shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, self.planes, self.page_size, self.num_kv_heads, self.row_dim)

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
        if self.scaled:
            dt += "+f32scale/token/head"
        rows = "" if self.planes == 2 else f"x{self.planes}plane"
        return (f"L{self.num_layers}xKV{self.num_kv_heads}xD{self.head_dim}xP{self.page_size}"
                f"{rows}:{dt}")
