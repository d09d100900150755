"""TritonBackend through the registry: store then attend, as a model layer calls it."""

from __future__ import annotations

import pytest
import torch

from runtime.engine.metadata import build_metadata
from runtime.kernels.backend import create_backend
from tests.runtime.kernels.on_device import DEVICE, fp32_tol


def pool_views(num_pages, page_size, kv_heads, head_dim, device, dtype):
    pool = torch.randn(num_pages, 2, 2, page_size, kv_heads, head_dim, device=device).to(dtype)
    return pool, (pool[:, 1, 0], pool[:, 1, 1])


def step(backend, views, meta, q, k, v):
    backend.store_kv(*views, k, v, meta)
    return backend.forward(q, *views, meta, 0.125)


@pytest.mark.parametrize("query_lens", [[9, 1, 14], [1, 1, 1]], ids=["extend", "decode"])
def test_triton_backend_matches_torch(query_lens, rel=None):
    torch.manual_seed(0)
    page_size, kv_heads, group, head_dim = 16, 2, 4, 64
    seq_lens = [25, 1, 40]
    tables = [[0, 1], [2], [3, 4, 5]]
    meta = build_metadata(tables, seq_lens, query_lens, page_size, torch.device(DEVICE))
    t = sum(query_lens)
    q = torch.randn(t, kv_heads * group, head_dim, device=DEVICE)
    k = torch.randn(t, kv_heads, head_dim, device=DEVICE)
    v = torch.randn(t, kv_heads, head_dim, device=DEVICE)
    pool_a, views_a = pool_views(7, page_size, kv_heads, head_dim, DEVICE, torch.float32)
    pool_b = pool_a.clone()
    views_b = (pool_b[:, 1, 0], pool_b[:, 1, 1])
    want = step(create_backend("torch"), views_a, meta, q, k, v)
    got = step(create_backend("triton"), views_b, meta, q, k, v)
    assert torch.equal(pool_a, pool_b)
    assert ((got - want).norm() / want.norm()).item() < fp32_tol()


@pytest.mark.gpu
def test_triton_backend_gpu_decode_graph_capture():
    torch.manual_seed(0)
    meta = build_metadata([[0, 1], [2, 3]], [300, 511], [1, 1], 256, torch.device("cuda"))
    q = torch.randn(2, 28, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 4, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 4, 128, device="cuda", dtype=torch.bfloat16)
    _, views = pool_views(4, 256, 4, 128, "cuda", torch.bfloat16)
    backend = create_backend("triton")
    eager = step(backend, views, meta, q, k, v)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(backend, views, meta, q, k, v)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
