"""The KV store kernel against the reference scatter."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_ref import store_kv_reference
from runtime.kernels.triton_store import store_kv
from tests.runtime.kernels.on_device import DEVICE


def pools(page_size, kv_heads, head_dim, dtype, device, pages=6, layers=3):
    pool = torch.randn(pages, layers, 2, page_size, kv_heads, head_dim, device=device).to(dtype)
    return pool, pool.clone()


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("page_size", [16, 64])
def test_store_matches_reference(page_size, head_dim):
    torch.manual_seed(0)
    a, b = pools(page_size, 2, head_dim, torch.float32, DEVICE)
    n = 23
    # k and v as strided slices of one fused projection, as the models produce them.
    qkv = torch.randn(n, 8 * head_dim, device=DEVICE)
    k = qkv[:, 4 * head_dim : 6 * head_dim].view(n, 2, head_dim)
    v = qkv[:, 6 * head_dim :].view(n, 2, head_dim)
    slots = torch.randperm(6 * page_size, device=DEVICE)[:n]
    store_kv_reference(a[:, 1, 0], a[:, 1, 1], k, v, slots, page_size)
    store_kv(b[:, 1, 0], b[:, 1, 1], k, v, slots)
    assert torch.equal(a, b)


def test_store_skips_negative_slots_and_casts():
    torch.manual_seed(0)
    a, b = pools(16, 2, 64, torch.float16, DEVICE)
    k, v = torch.randn(5, 2, 64, device=DEVICE), torch.randn(5, 2, 64, device=DEVICE)
    slots = torch.tensor([3, -1, 40, -1, 95], device=DEVICE)
    keep = slots >= 0
    store_kv_reference(a[:, 2, 0], a[:, 2, 1], k[keep], v[keep], slots[keep], 16)
    store_kv(b[:, 2, 0], b[:, 2, 1], k, v, slots)
    assert torch.equal(a, b)


@pytest.mark.gpu
def test_store_gpu_bf16():
    torch.manual_seed(0)
    a, b = pools(256, 4, 128, torch.bfloat16, "cuda", pages=64, layers=4)
    k = torch.randn(5000, 4, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(5000, 4, 128, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(64 * 256, device="cuda")[:5000]
    store_kv_reference(a[:, 3, 0], a[:, 3, 1], k, v, slots, 256)
    store_kv(b[:, 3, 0], b[:, 3, 1], k, v, slots)
    assert torch.equal(a, b)
