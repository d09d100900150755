"""FlashAttnBackend: flash-attn 2's paged kernels for attention, the Triton kernel for the store.

flash-attn reads the page pool through our per-layer strided views as they are: its paged path
checks only that head_dim is contiguous and takes the page stride from `k_cache.stride(0)` (and
the slot and head strides from strides 1 and 2), so no copy is made. It does require pages of a
multiple of 256 tokens (the GPU page size); any other page size, and head dims it does not
support, fall back to the Triton kernels. `flash_attn` is imported here, when the backend is
chosen, so a missing install fails only then.
"""

from __future__ import annotations

import logging

import torch

from runtime.errors import RuntimeError_
from runtime.kernels.backend import AttentionBackend, AttentionMetadata, refuse_variants
from runtime.kernels.triton_backend import TritonBackend
from runtime.kernels.triton_store import store_kv

log = logging.getLogger(__name__)

FLASH_PAGE_MULTIPLE = 256  # flash-attn 2 rejects paged KV blocks of other sizes


class FlashAttnUnavailable(RuntimeError_):
    """flash-attn is not installed (or does not import) in this environment."""


class FlashAttnBackend(AttentionBackend):
    """flash_attn_with_kvcache for decode, flash_attn_varlen_func with a block table for extend.

    Decode is CUDA-graph safe (flash-attn reads seq_lens and the block table on the device).
    """

    name = "flash_attn"

    def __init__(self) -> None:
        try:
            from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
        except ImportError as e:
            raise FlashAttnUnavailable(
                f"flash-attn is not importable ({e}); `pip install flash-attn` or choose the "
                "triton attention backend"
            ) from e
        self._varlen = flash_attn_varlen_func
        self._kvcache = flash_attn_with_kvcache
        self._fallback = TritonBackend()
        self._warned = False

    def store_kv(self, k_cache, v_cache, k, v, meta: AttentionMetadata) -> None:
        store_kv(k_cache, v_cache, k, v, meta.slot_mapping)

    def supports(self, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
        """Whether flash-attn accepts this page size, dtype and head_dim."""
        head_dim = q.shape[-1]
        return (
            k_cache.shape[1] % FLASH_PAGE_MULTIPLE == 0
            and q.dtype in (torch.float16, torch.bfloat16)
            and head_dim % 8 == 0
            and head_dim <= 256
        )

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, *,
                window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
        refuse_variants(self.name, window, sinks)
        if not self.supports(q, k_cache):
            if not self._warned:
                log.warning(
                    "flash-attn cannot take page size %d / %s / head_dim %d; using Triton",
                    k_cache.shape[1],
                    q.dtype,
                    q.shape[-1],
                )
                self._warned = True
            return self._fallback.forward(q, k_cache, v_cache, meta, scale)
        if meta.is_decode:
            out = self._kvcache(
                q.unsqueeze(1),  # (B, 1, Hq, D)
                k_cache, v_cache,
                cache_seqlens=meta.seq_lens,
                block_table=meta.block_tables,
                softmax_scale=scale,
                causal=True,
            )  # fmt: skip
            return out.squeeze(1)
        cu_seqlens_k = torch.zeros(meta.batch_size + 1, dtype=torch.int32, device=q.device)
        torch.cumsum(meta.seq_lens, 0, out=cu_seqlens_k[1:])
        return self._varlen(
            q, k_cache, v_cache,
            cu_seqlens_q=meta.query_start_loc,
            cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=meta.max_query_len,
            max_seqlen_k=meta.max_seq_len,
            softmax_scale=scale,
            causal=True,  # flash-attn >= 2.1 aligns causality to the end, as the contract says
            block_table=meta.block_tables,
        )  # fmt: skip
