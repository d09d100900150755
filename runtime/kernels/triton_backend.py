"""TritonBackend: the paged store, extend and split-KV decode kernels behind the contract."""

from __future__ import annotations

import torch

from runtime.kernels.backend import AttentionBackend, AttentionMetadata, refuse_variants
from runtime.kernels.fp8_kv import is_fp8
from runtime.kernels.triton_decode import DecodeConfig, compile_merges, decode_attention
from runtime.kernels.triton_extend import ExtendConfig, extend_attention
from runtime.kernels.triton_fp8 import store_kv_fp8
from runtime.kernels.triton_store import store_kv


class TritonBackend(AttentionBackend):
    """Triton kernels on CUDA (and in the Triton interpreter on CPU, for tests).

    Decode (`meta.is_decode`) runs the split-KV kernel plus merge; its launch reads no tensor
    value on the host and its grid depends only on the batch size and `num_splits` (fixed here,
    or derived from the block table's width), so it can be captured in a CUDA graph. Extend
    reads host ints from the metadata (max_query_len, max_seq_len) to size its grid. fp8
    caches (memory/kv_layout.py) go through the fp8 store and the kernels' fp8 loads.
    """

    name = "triton"

    def __init__(
        self,
        decode_splits: int | None = None,
        extend_config: ExtendConfig | None = None,
        decode_config: DecodeConfig | None = None,
        pdl: bool = True,
    ):
        self.decode_splits = decode_splits
        self.extend_config = extend_config
        self.decode_config = decode_config
        self.pdl = pdl  # programmatic dependent launch; LayerOps' `pdl` option sets it

    def compile_variants(self, num_heads: int, head_dim: int, dtype: torch.dtype,
                         device: torch.device) -> None:
        compile_merges(num_heads, head_dim, dtype, device)

    def store_kv(self, k_cache, v_cache, k, v, meta: AttentionMetadata) -> None:
        if is_fp8(k_cache):
            store_kv_fp8(k_cache, v_cache, k, v, meta.slot_mapping, pdl=self.pdl)
        else:
            store_kv(k_cache, v_cache, k, v, meta.slot_mapping, pdl=self.pdl)

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, *,
                window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
        refuse_variants(self.name, window, sinks)
        if meta.is_decode:
            return decode_attention(
                q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale,
                num_splits=self.decode_splits, config=self.decode_config, pdl=self.pdl,
            )  # fmt: skip
        return extend_attention(
            q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
            meta.max_query_len, scale, max_seq_len=meta.max_seq_len, config=self.extend_config,
            pdl=self.pdl,
        )  # fmt: skip
