"""Multi-head latent attention in torch over paged latents: the CPU path and the reference
the kernels are tested against (runtime/kernels/latent_backend.py states the contract)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.kernels.backend import AttentionMetadata
from runtime.kernels.latent_backend import LatentAttentionBackend
from runtime.kernels.torch_ref import causal_mask, gather_kv


def store_latent(cache: Tensor, latent: Tensor, meta: AttentionMetadata) -> None:
    """Scatter `latent` `(T, latent_dim)` into its slots of `cache` `[pages, P, 1, latent_dim]`."""
    pages, offsets = meta.slot_mapping // meta.page_size, meta.slot_mapping % meta.page_size
    cache[pages, offsets, 0] = latent.to(cache.dtype)


def _sequences(meta: AttentionMetadata):
    """(batch index, first query row, query count, key count) per sequence."""
    start = 0
    for b, (q_len, kv_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
        yield b, start, q_len, kv_len
        start += q_len


def _latents(cache: Tensor, meta: AttentionMetadata, b: int, kv_len: int) -> Tensor:
    return gather_kv(cache, meta.block_tables[b], kv_len)[:, 0]  # (S, latent_dim)


def expanded_attention(q_nope: Tensor, q_rope: Tensor, latents: Tensor, w_kv: Tensor,
                       scale: float) -> Tensor:
    """One sequence, expanded: keys and values up-projected from `latents` `(S, R + Dr)`."""
    heads, dn, rank = q_nope.shape[1], q_nope.shape[2], w_kv.shape[2]
    c, k_rope = latents[:, :rank].to(q_nope.dtype), latents[:, rank:].to(q_nope.dtype)
    kv = F.linear(c, w_kv.reshape(-1, rank)).view(-1, heads, w_kv.shape[1])  # (S, H, Dn + Dv)
    k_nope, v = kv.split([dn, w_kv.shape[1] - dn], dim=-1)
    k = torch.cat([k_nope, k_rope[:, None, :].expand(-1, heads, -1)], dim=-1)  # (S, H, Dqk)
    q = torch.cat([q_nope, q_rope], dim=-1)  # (T, H, Dqk)
    scores = torch.einsum("thd,shd->hts", q, k) * scale
    mask = causal_mask(q.shape[0], k.shape[0], q.device)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1,
                          dtype=torch.float32).to(q.dtype)
    return torch.einsum("hts,shd->thd", probs, v)  # (T, H, Dv)


def absorbed_attention(q_nope: Tensor, q_rope: Tensor, latents: Tensor, w_kv: Tensor,
                       scale: float) -> Tensor:
    """One sequence, absorbed: scores and the value sum in latent space (no K, no V)."""
    dn, rank = q_nope.shape[2], w_kv.shape[2]
    w_uk, w_uv = w_kv[:, :dn], w_kv[:, dn:]  # (H, Dn, R), (H, Dv, R)
    c, k_rope = latents[:, :rank].to(q_nope.dtype), latents[:, rank:].to(q_nope.dtype)
    q_lat = torch.einsum("thd,hdr->thr", q_nope, w_uk)  # (T, H, R)
    scores = (torch.einsum("thr,sr->hts", q_lat, c)
              + torch.einsum("thd,sd->hts", q_rope, k_rope)) * scale
    mask = causal_mask(q_nope.shape[0], c.shape[0], c.device)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1,
                          dtype=torch.float32).to(c.dtype)
    out_lat = torch.einsum("hts,sr->thr", probs, c)  # (T, H, R)
    return torch.einsum("thr,hvr->thv", out_lat, w_uv)  # (T, H, Dv)


class TorchLatentBackend(LatentAttentionBackend):
    """Pure torch; loops over the sequences of a batch in Python."""

    name = "torch"

    def store(self, cache, latent, meta):
        store_latent(cache, latent, meta)

    def extend(self, q_nope, q_rope, cache, w_kv, meta, scale):
        return self._each(expanded_attention, q_nope, q_rope, cache, w_kv, meta, scale)

    def decode(self, q_nope, q_rope, cache, w_kv, meta, scale):
        return self._each(absorbed_attention, q_nope, q_rope, cache, w_kv, meta, scale)

    @staticmethod
    def _each(attend, q_nope, q_rope, cache, w_kv, meta, scale) -> Tensor:
        out = q_nope.new_empty(*q_nope.shape[:2], w_kv.shape[1] - q_nope.shape[2])
        for b, start, q_len, kv_len in _sequences(meta):
            rows = slice(start, start + q_len)
            out[rows] = attend(q_nope[rows], q_rope[rows], _latents(cache, meta, b, kv_len),
                               w_kv, scale)
        return out
