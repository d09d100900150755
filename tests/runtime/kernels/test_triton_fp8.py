"""fp8 KV in the Triton kernels against the torch reference (interpreter on CPU, fp32 compute).

The store must write the very bytes the reference writes (values and scales, subnormals, zero
rows, -0.0, padding slots skipped); extend and decode over fp8 pages must match the reference
attention over the same pages, with key splits and GQA, across page sizes.
"""

from __future__ import annotations

import pytest
import torch

from memory.kv_layout import FP8_KV, KVLayout
from runtime.engine.metadata import build_metadata
from runtime.kernels.backend import create_backend
from runtime.kernels.triton_decode import decode_attention
from runtime.kernels.triton_extend import extend_attention
from runtime.kernels.triton_fp8 import store_kv_fp8

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fp8_pool(num_pages: int, page_size: int, kv_heads: int, head_dim: int):
    layout = KVLayout(2, kv_heads, head_dim, page_size, FP8_KV)
    # Random bytes everywhere: a kernel that reads an unwritten slot sees garbage (or NaN).
    pool = torch.randint(0, 256, (num_pages, *layout.page_shape), dtype=torch.uint8,
                         device=DEVICE).view(FP8_KV)  # fmt: skip
    return pool, (pool[:, 1, 0], pool[:, 1, 1])


def test_store_writes_the_references_bytes():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(9, 2, 32, generator=g) * torch.logspace(-5, 2, 32)  # subnormals to large
    v = torch.randn(9, 2, 32, generator=g)
    k[2, 1] = 0.0
    k[4, 0, :7] = -0.0
    slots = torch.tensor([5, 6, 7, 8, 9, -1, 2, 30, 31])  # one padding token
    pool, views = fp8_pool(5, 8, 2, 32)
    ref_pool = pool.clone()
    ref_views = (ref_pool[:, 1, 0], ref_pool[:, 1, 1])
    keep = slots >= 0
    meta = build_metadata([[0]], [1], [1], 8, torch.device(DEVICE))
    meta.slot_mapping = slots[keep].to(DEVICE)
    create_backend("torch").store_kv(*ref_views, k[keep].to(DEVICE), v[keep].to(DEVICE), meta)
    store_kv_fp8(*views, k.to(DEVICE), v.to(DEVICE), slots.to(DEVICE))
    assert torch.equal(pool.view(torch.uint8), ref_pool.view(torch.uint8))


CASES = [
    # page_size, kv_heads, group, head_dim, seq_lens, query_lens
    (16, 2, 4, 64, [25, 1, 40], [9, 1, 14]),
    (8, 1, 7, 32, [70, 17], [70, 3]),
    (16, 2, 4, 64, [25, 1, 40], [1, 1, 1]),
    (4, 4, 1, 16, [33, 5], [1, 1]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"P{c[0]}-G{c[2]}-D{c[3]}-q{c[5]}")
@pytest.mark.parametrize("splits", [None, 3])
def test_attention_over_fp8_pages_matches_the_reference(case, splits, rel):
    page_size, kv_heads, group, head_dim, seq_lens, query_lens = case
    g = torch.Generator().manual_seed(len(seq_lens) + head_dim)
    pages = [-(-n // page_size) for n in seq_lens]
    pool, views = fp8_pool(sum(pages) + 2, page_size, kv_heads, head_dim)
    order = torch.randperm(sum(pages) + 2, generator=g).tolist()
    tables = [order[sum(pages[:i]) : sum(pages[: i + 1])] for i in range(len(pages))]
    full = build_metadata(tables, seq_lens, seq_lens, page_size, torch.device(DEVICE))
    k = torch.randn(sum(seq_lens), kv_heads, head_dim, generator=g).to(DEVICE)
    v = torch.randn(sum(seq_lens), kv_heads, head_dim, generator=g).to(DEVICE)
    create_backend("triton").store_kv(*views, k, v, full)
    meta = build_metadata(tables, seq_lens, query_lens, page_size, torch.device(DEVICE))
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    q = torch.randn(sum(query_lens), kv_heads * group, head_dim, generator=g).to(DEVICE, dtype)
    want = create_backend("torch").forward(q, *views, meta, 0.2)
    if meta.is_decode:
        got = decode_attention(q, *views, meta.block_tables, meta.seq_lens, 0.2,
                               num_splits=splits)  # fmt: skip
    else:
        got = extend_attention(q, *views, meta.block_tables, meta.seq_lens,
                               meta.query_start_loc, meta.max_query_len, 0.2,
                               num_splits=splits)  # fmt: skip
    assert rel(got, want) < (2e-2 if DEVICE == "cuda" else 1e-5)
