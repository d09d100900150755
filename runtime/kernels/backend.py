"""The attention backend contract, the per-forward metadata, and the backend registry."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime.errors import UnsupportedModel


class UnsupportedAttention(UnsupportedModel):
    """The chosen attention backend lacks a variant the model needs (window, sinks)."""


def refuse_variants(backend: str, window: int | None, sinks: torch.Tensor | None) -> None:
    """Raise UnsupportedAttention when a backend without window/sink support is asked for one."""
    if window is None and sinks is None:
        return
    what = " and ".join(n for n, v in (("sliding windows", window), ("attention sinks", sinks))
                        if v is not None)
    raise UnsupportedAttention(
        f"the {backend} attention backend does not implement {what} yet (gpt-oss); "
        "run this model with --device cpu until the Triton kernels do"
    )


@dataclass
class AttentionMetadata:
    """What one forward over a batch of sequences needs to know about their KV pages.

    Tokens of all sequences are flattened into one dimension T (queries of sequence b are
    `query_start_loc[b]:query_start_loc[b+1]`). Every new token's K/V is written to its slot
    before attention, so keys include the new tokens; causality is aligned to the end of each
    sequence: query i of a sequence with q_len queries and kv_len keys sees keys
    `0 .. kv_len - q_len + i`.
    """

    slot_mapping: torch.Tensor  # (T,) int64: page_id * page_size + offset of each new token
    block_tables: torch.Tensor  # (B, max_pages) int32: page ids per sequence, padded
    seq_lens: torch.Tensor  # (B,) int32: keys per sequence after this forward
    query_start_loc: torch.Tensor  # (B + 1,) int32: prefix sums of query lengths
    page_size: int
    max_query_len: int
    max_seq_len: int
    # Host copies, for backends that loop in Python (the reference) and for planning.
    seq_lens_cpu: list[int]
    query_lens_cpu: list[int]

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(ABC):
    """Stores new K/V into pages and attends queries over the paged keys of each sequence.

    Contract: both methods see one layer's cache views `k_cache`, `v_cache` of shape
    `[num_pages, page_size, kv_heads, head_dim]` (strided views into the page pool; never
    reallocate them). `store_kv` mutates only the slots named by `meta.slot_mapping`.
    `forward` mutates nothing and returns `(T, num_heads, head_dim)` in q's dtype. num_heads is a
    multiple of kv_heads (GQA); query head h reads kv head `h // (num_heads // kv_heads)`.

    Two per-layer variants (gpt-oss): `window` W limits query i to the W keys ending at its own
    (`i - W < j <= i`, transformers' sliding-window mask); `sinks` `(num_heads,)` fp32 are
    learned logits that join each query row's softmax as one extra column whose value is zero.
    A backend that lacks a variant raises `UnsupportedAttention` naming it, never ignores it.
    """

    name: str = "abstract"

    @abstractmethod
    def store_kv(
        self,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        k: torch.Tensor,  # (T, kv_heads, head_dim)
        v: torch.Tensor,  # (T, kv_heads, head_dim)
        meta: AttentionMetadata,
    ) -> None:
        """Write the new tokens' keys and values into their slots."""

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # (T, num_heads, head_dim)
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        *,
        window: int | None = None,
        sinks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention of each sequence's queries over its keys (the last `window` only)."""

    def compile_variants(self, num_heads: int, head_dim: int, dtype: torch.dtype,
                         device: torch.device) -> None:
        """Compile at start-up what running chunks does not reach (nothing by default)."""
        return None


# name -> "module:Class"; imported lazily so a missing optional library fails only when chosen.
_BACKENDS: dict[str, str] = {
    "torch": "runtime.kernels.torch_ref:TorchReferenceBackend",
    "triton": "runtime.kernels.triton_backend:TritonBackend",
    "flash_attn": "runtime.kernels.flash_attn_backend:FlashAttnBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register `module:Class` under `name` (for out-of-tree backends and tests)."""
    _BACKENDS[name] = target


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(name: str, **kwargs) -> AttentionBackend:
    """Instantiate a backend by name; raises ValueError naming the choices for an unknown one."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {available_backends()}")
    module, cls = _BACKENDS[name].split(":")
    factory: Callable[..., AttentionBackend] = getattr(importlib.import_module(module), cls)
    return factory(**kwargs)


def default_backend_name(device: torch.device) -> str:
    """The torch reference on CPU; Triton on CUDA."""
    return "triton" if device.type == "cuda" else "torch"
