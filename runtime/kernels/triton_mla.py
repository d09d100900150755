"""Multi-head latent attention in Triton over paged latent rows (absorbed form, any query count).

One program serves one query token and a block of its heads: it walks the keys its causal
limit allows (`0 .. position`), page by page through the block table, scoring the absorbed
query `q_lat = q_nope W_uk` (kv_lora_rank wide) against each latent plus the rope parts, with
an online softmax, and accumulates the latents themselves; `W_uv` is applied to the result
once, outside. So one kernel serves decode (one query per sequence) and extend (many), reads
each sequence's latents once per query token and never materialises per-head K or V. Long
decodes split the keys over several programs per head block (flash-decoding): each writes its
normalised partial output and log-sum-exp, and the splits are merged by their weights.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime.kernels.backend import AttentionMetadata
from runtime.kernels.latent_backend import LatentAttentionBackend
from runtime.kernels.torch_mla import store_latent


@triton.jit
def _latent_attention_kernel(
    q_lat, q_rope, cache, tables, token_seq, token_pos, out, scale,
    lse, s_qt, s_qh, s_rt, s_rh, s_cp, s_cn, s_bt, s_ot, s_os, s_oh, s_lt, s_ls,
    num_heads, rank, rope_dim, page_size, keys_per_split,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DR: tl.constexpr,
):
    t = tl.program_id(0)
    h0 = tl.program_id(1) * BLOCK_H
    split = tl.program_id(2)
    heads = h0 + tl.arange(0, BLOCK_H)
    r = tl.arange(0, BLOCK_R)
    dr = tl.arange(0, BLOCK_DR)
    hm = heads < num_heads
    seq = tl.load(token_seq + t)
    pos = tl.load(token_pos + t)  # the last key this query sees
    ql = tl.load(q_lat + t * s_qt + heads[:, None] * s_qh + r[None, :],
                 mask=hm[:, None] & (r[None, :] < rank), other=0.0).to(tl.float32)
    qr = tl.load(q_rope + t * s_rt + heads[:, None] * s_rh + dr[None, :],
                 mask=hm[:, None] & (dr[None, :] < rope_dim), other=0.0).to(tl.float32)
    m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    lsum = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_R), tl.float32)
    first = split * keys_per_split
    stop = tl.minimum(pos + 1, first + keys_per_split)
    for start in range(first, stop, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        nm = n < stop
        page = tl.load(tables + seq * s_bt + n // page_size, mask=nm, other=0).to(tl.int64)
        row = cache + page * s_cp + (n % page_size) * s_cn
        c = tl.load(row[:, None] + r[None, :], mask=nm[:, None] & (r[None, :] < rank),
                    other=0.0).to(tl.float32)  # (N, R)
        kr = tl.load(row[:, None] + rank + dr[None, :],
                     mask=nm[:, None] & (dr[None, :] < rope_dim), other=0.0).to(tl.float32)
        s = tl.dot(ql, tl.trans(c)) + tl.dot(qr, tl.trans(kr))  # (H, N)
        s = tl.where(nm[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        lsum = lsum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, c)
        m = m_new
    empty = lsum == 0.0  # a split past this query's keys
    lsum = tl.where(empty, 1.0, lsum)
    acc = acc / lsum[:, None]
    tl.store(out + t * s_ot + split * s_os + heads[:, None] * s_oh + r[None, :], acc,
             mask=hm[:, None] & (r[None, :] < rank))
    tl.store(lse + t * s_lt + split * s_ls + heads, tl.where(empty, float("-inf"),
             m + tl.log(lsum)), mask=hm)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


SPLIT_KEYS = 4096  # keys per split at least, when a decode is split
TARGET_PROGRAMS = 264  # two per multiprocessor of an H200


def num_splits(tokens: int, heads: int, max_keys: int) -> int:
    """Splits of the keys: enough programs to fill the GPU, each over SPLIT_KEYS keys or more."""
    programs = tokens * triton.cdiv(heads, 16)
    return max(1, min(-(-max_keys // SPLIT_KEYS), -(-TARGET_PROGRAMS // programs), 64))


def latent_attention(q_lat: torch.Tensor, q_rope: torch.Tensor, cache: torch.Tensor,
                     block_tables: torch.Tensor, token_seq: torch.Tensor,
                     token_pos: torch.Tensor, scale: float, block_n: int = 32,
                     max_keys: int | None = None, splits: int | None = None) -> torch.Tensor:
    """Attention of q_lat `(T, H, R)`, q_rope `(T, H, Dr)` over the latents of `cache`
    `[pages, P, 1, R + Dr]`; query t belongs to sequence `token_seq[t]` and sees keys
    `0 .. token_pos[t]` (at most `max_keys`, which sizes the splits). Returns the
    latent-space output `(T, H, R)` fp32."""
    t, heads, rank = q_lat.shape
    rope_dim = q_rope.shape[2]
    assert cache.stride(3) == 1 and q_lat.stride(2) == 1 and q_rope.stride(2) == 1
    assert cache.shape[3] == rank + rope_dim, "cache rows are latent + rope"
    max_keys = max_keys or block_tables.shape[1] * cache.shape[1]
    splits = splits or num_splits(t, heads, max_keys)
    per_split = triton.cdiv(triton.cdiv(max_keys, splits), block_n) * block_n
    out = torch.empty(t, splits, heads, rank, dtype=torch.float32, device=q_lat.device)
    lse = torch.empty(t, splits, heads, dtype=torch.float32, device=q_lat.device)
    block_h = 16
    grid = (t, triton.cdiv(heads, block_h), splits)
    _latent_attention_kernel[grid](
        q_lat, q_rope, cache, block_tables, token_seq, token_pos, out, scale, lse,
        q_lat.stride(0), q_lat.stride(1), q_rope.stride(0), q_rope.stride(1),
        cache.stride(0), cache.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
        out.stride(2), lse.stride(0), lse.stride(1),
        heads, rank, rope_dim, cache.shape[1], per_split,
        BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_R=_pow2(rank), BLOCK_DR=_pow2(rope_dim),
    )
    if splits == 1:
        return out[:, 0]
    weights = torch.softmax(lse, dim=1).nan_to_num(0.0)  # (T, S, H): each split's share
    return (out * weights[..., None]).sum(dim=1)


def query_tokens(meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query token: its sequence and its position (the last key it sees). Decode steps
    build both on the device from `seq_lens` alone, so they replay inside CUDA graphs."""
    device = meta.seq_lens.device
    if meta.is_decode:
        return (torch.arange(meta.batch_size, dtype=torch.int32, device=device),
                (meta.seq_lens - 1).to(torch.int32))
    lens = torch.tensor(meta.query_lens_cpu, device=device)
    seq = torch.repeat_interleave(torch.arange(meta.batch_size, device=device), lens)
    ends = meta.seq_lens.long()[seq]
    first = meta.query_start_loc.long()[seq]
    offset = torch.arange(seq.numel(), device=device) - first
    pos = ends - lens[seq] + offset
    return seq.to(torch.int32), pos.to(torch.int32)


class TritonLatentBackend(LatentAttentionBackend):
    """The absorbed kernel for extend and decode alike; stores go through torch indexing."""

    name = "triton"

    def store(self, cache, latent, meta):
        store_latent(cache, latent, meta)

    def extend(self, q_nope, q_rope, cache, w_kv, meta, scale):
        return self._attend(q_nope, q_rope, cache, w_kv, meta, scale)

    def decode(self, q_nope, q_rope, cache, w_kv, meta, scale):
        return self._attend(q_nope, q_rope, cache, w_kv, meta, scale)

    @staticmethod
    def _attend(q_nope, q_rope, cache, w_kv, meta: AttentionMetadata, scale: float):
        dn = q_nope.shape[2]
        q_lat = torch.einsum("thd,hdr->thr", q_nope, w_kv[:, :dn]).contiguous()  # (T, H, R)
        seq, pos = query_tokens(meta)
        out_lat = latent_attention(q_lat, q_rope.contiguous(), cache, meta.block_tables, seq,
                                   pos, scale, max_keys=meta.max_seq_len)
        return torch.einsum("thr,hvr->thv", out_lat.to(q_nope.dtype), w_kv[:, dn:])
