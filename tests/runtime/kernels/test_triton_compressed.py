"""DeepSeek-V4's Triton indexer scores and sparse attention against the torch reference over
paged per-token rows (interpreter on the CPU; compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_compressed import indexer_select, sink_attention, visible_entries
from runtime.kernels.torch_ref import gather_kv
from runtime.kernels.triton_compressed import indexer_scores, sparse_attention
from runtime.kernels.triton_mla import query_tokens
from tests.runtime.kernels.on_device import DEVICE, fp32_tol

D, DI, KV, ENTRY, KEY = 32, 16, 0, 32, 64  # row: kv | entry | indexer key | junk
WIDTH = 96


def rows_and_meta(paged, seq_lens, query_lens, page=8):
    p = paged(seq_lens, query_lens, 1, WIDTH, page, torch.float32, DEVICE)
    return p, p.k_cache


def per_query(p, cache):
    """(sequence rows, positions) per query token, as the torch path sees them."""
    seq, pos = query_tokens(p.meta)
    for t in range(seq.numel()):
        b = int(seq[t])
        yield t, gather_kv(cache, p.meta.block_tables[b], p.meta.seq_lens_cpu[b])[:, 0], int(pos[t])


def reference(p, cache, q, sinks, window, rate, chosen_mask):
    out = torch.empty_like(q)
    for t, rows, pos in per_query(p, cache):
        lo = max(0, pos - window + 1)
        keys = rows[lo : pos + 1, KV : KV + D]
        allowed = torch.ones(1, keys.shape[0], dtype=torch.bool, device=q.device)
        if rate:
            n = rows.shape[0] // rate
            entries = rows[(torch.arange(n) + 1) * rate - 1][:, ENTRY : ENTRY + D]
            vis = visible_entries(torch.tensor([pos]), rate, n).to(q.device)
            if chosen_mask is not None:
                vis = vis & chosen_mask[t, :n][None]
            keys, allowed = torch.cat([keys, entries]), torch.cat([allowed, vis], dim=1)
        out[t] = sink_attention(q[t : t + 1], keys, allowed, sinks, 0.3)[0]
    return out


CASES = [([5, 30, 41], [1, 1, 1]), ([29, 40], [29, 6])]


@pytest.mark.parametrize("seq_lens,query_lens", CASES)
@pytest.mark.parametrize("rate", [0, 4, 8])
def test_sparse_attention_window_and_every_entry(paged, rel, seq_lens, query_lens, rate):
    p, cache = rows_and_meta(paged, seq_lens, query_lens)
    t, heads = sum(query_lens), 20
    q = torch.randn(t, heads, D, device=DEVICE)
    sinks = torch.randn(heads, device=DEVICE)
    seq, pos = query_tokens(p.meta)
    got = sparse_attention(q, cache, p.meta.block_tables, seq, pos, sinks, 0.3, kv_offset=KV,
                           window=8, entry_offset=ENTRY, rate=rate)
    want = reference(p, cache, q.double(), sinks.double(), 8, rate, None)
    assert rel(got, want) < fp32_tol(gpu=5e-3)


@pytest.mark.parametrize("seq_lens,query_lens", CASES)
def test_indexer_top_k_and_chosen_entries(paged, rel, seq_lens, query_lens):
    p, cache = rows_and_meta(paged, seq_lens, query_lens)
    t, hi, rate, top_k = sum(query_lens), 8, 4, 3
    qi = torch.randn(t, hi, DI, device=DEVICE)
    w = torch.randn(t, hi, device=DEVICE)
    seq, pos = query_tokens(p.meta)
    n_max = max(seq_lens) // rate
    scores = indexer_scores(qi, w, cache, p.meta.block_tables, seq, pos, KEY, rate, n_max, 0.25)
    picked = torch.zeros(t, n_max, dtype=torch.bool, device=DEVICE)
    for i, rows, position in per_query(p, cache):
        n = rows.shape[0] // rate
        keys = rows[(torch.arange(n) + 1) * rate - 1][:, KEY : KEY + DI]
        vis = visible_entries(torch.tensor([position]), rate, n).to(DEVICE)
        want = indexer_select(qi[i : i + 1], w[i : i + 1], keys, vis, top_k, 0.25)
        picked[i, :n] = want[0]
        ref_scores = (torch.relu(torch.einsum("hd,ed->he", qi[i].double(), keys.double()))
                      * 0.25 * w[i].double()[:, None]).sum(0)
        ok = vis[0]
        if ok.any():
            assert rel(scores[i, :n][ok], ref_scores[ok]) < fp32_tol(gpu=5e-3)
        assert torch.isinf(scores[i, :n][~ok]).all()
    top = scores.topk(min(top_k, n_max), dim=-1)
    chosen = torch.where(torch.isinf(top.values), -1, top.indices).to(torch.int32)
    mine = torch.zeros(t, n_max + 1, dtype=torch.bool, device=DEVICE)
    mine.scatter_(1, torch.where(chosen < 0, n_max, chosen).long(), True)
    assert torch.equal(mine[:, :n_max], picked)  # the torch path's choice
    heads = 4
    q = torch.randn(t, heads, D, device=DEVICE)
    sinks = torch.randn(heads, device=DEVICE)
    got = sparse_attention(q, cache, p.meta.block_tables, seq, pos, sinks, 0.3, kv_offset=KV,
                           window=8, entry_offset=ENTRY, rate=rate, chosen=chosen)
    want = reference(p, cache, q.double(), sinks.double(), 8, rate, picked)
    assert rel(got, want) < fp32_tol(gpu=5e-3)
