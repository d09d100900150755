"""The extend kernel against the torch reference: GQA, head dims, page sizes, varlen batches."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_ref import TorchReferenceBackend
from runtime.kernels.triton_extend import ExtendConfig, extend_attention
from tests.runtime.kernels.on_device import DEVICE, fp32_tol

# (seq_len, query_len): a cached prefix, an empty cache, one token, lengths off every block size.
MIXED = [(37, 10), (5, 5), (50, 1), (70, 33)]


def run_extend(p, q, scale, **kw):
    m = p.meta
    return extend_attention(
        q,
        p.k_cache,
        p.v_cache,
        m.block_tables,
        m.seq_lens,
        m.query_start_loc,
        m.max_query_len,
        scale,
        **kw,
    )


def reference(p, q, scale):
    ref = TorchReferenceBackend()
    return ref.forward(q.double(), p.k_cache.double(), p.v_cache.double(), p.meta, scale)


def check(paged, rel, batch, group, head_dim, page_size, kv_heads=2, tol=1e-5, **kw):
    seq_lens, query_lens = [s for s, _ in batch], [q for _, q in batch]
    p = paged(seq_lens, query_lens, kv_heads, head_dim, page_size, torch.float32, DEVICE)
    q = torch.randn(sum(query_lens), kv_heads * group, head_dim, device=DEVICE)
    scale = head_dim**-0.5
    out = run_extend(p, q, scale, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel(out, reference(p, q, scale)) < fp32_tol(tol)


@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 7])
def test_extend_matches_reference(paged, rel, group, head_dim, page_size):
    check(paged, rel, MIXED, group, head_dim, page_size, kv_heads=1 if group == 7 else 2)


@pytest.mark.parametrize("group", [1, 7])
def test_extend_tile_wider_than_page(paged, rel, group):
    # BLOCK_N 32 over 16-token pages: each key looks its page up (the general path).
    cfg = ExtendConfig(block_m=16, block_n=32, num_warps=1, num_stages=1)
    check(paged, rel, MIXED, group, 64, 16, config=cfg)


@pytest.mark.parametrize("group", [1, 7])
@pytest.mark.parametrize("page_size", [16, 64])
def test_extend_tma_tiles(paged, rel, group, page_size):
    # Whole in-page tiles through tensor descriptors (the interpreter emulates the bulk copy);
    # page 16 with BLOCK_N 32 falls back to pointer loads.
    cfg = ExtendConfig(block_m=32, block_n=16 if page_size == 64 else 32, num_warps=1,
                       num_stages=1, tma=True, warp_specialize=True)  # fmt: skip
    check(paged, rel, MIXED, group, 64, page_size, config=cfg, num_splits=2)


@pytest.mark.parametrize("num_splits", [2, 3, 5])
def test_extend_key_splits(paged, rel, num_splits):
    # Splits past a short sequence's end stay empty; the merge must give them no weight.
    batch = [(90, 7), (20, 20), (61, 1)]
    check(paged, rel, batch, 4, 64, 16, num_splits=num_splits)


def test_extend_non_power_of_two_head_dim(paged, rel):
    check(paged, rel, MIXED, 2, 80, 16)


def test_extend_single_sequence_prefill(paged, rel):
    check(paged, rel, [(45, 45)], 7, 64, 16, kv_heads=1)


def test_extend_writes_every_row_of_out(paged, rel):
    p = paged([30, 9], [12, 9], 2, 64, 16, torch.float32, DEVICE)
    q = torch.randn(21, 8, 64, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    run_extend(p, q, 0.1, out=out)
    assert rel(out, reference(p, q, 0.1)) < fp32_tol()


def test_extend_split_heuristic_only_for_long_keys():
    from runtime.kernels.triton_extend import extend_num_splits

    cpu = torch.device("cpu")  # 4 "SMs" off the GPU
    assert extend_num_splits(tiles=3, max_seq_len=4096, device=cpu) == 1
    assert extend_num_splits(tiles=1, max_seq_len=1 << 20, device=cpu) == 4
    assert extend_num_splits(tiles=8, max_seq_len=1 << 20, device=cpu) == 1


# ---- GPU, bf16, real sizes -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_extend_gpu_qwen_shape(paged, rel, dtype, tma):
    # Qwen2.5-7B: 28 query heads over 4 kv heads, d 128; GPU page size 256.
    batch = [(20_000, 2048), (3000, 3000), (40_001, 1), (9_999, 517)]
    seq_lens, query_lens = [s for s, _ in batch], [q for _, q in batch]
    p = paged(seq_lens, query_lens, 4, 128, 256, dtype, "cuda")
    q = torch.randn(sum(query_lens), 28, 128, dtype=dtype, device="cuda")
    cfg = ExtendConfig(128, 128, 8, 3, tma=tma)
    out = run_extend(p, q, 128**-0.5, max_seq_len=max(seq_lens), config=cfg)
    ref = TorchReferenceBackend().forward(
        q.float(), p.k_cache.float(), p.v_cache.float(), p.meta, 128**-0.5
    )
    assert rel(out, ref) < 1e-2


@pytest.mark.gpu
def test_extend_gpu_long_cache_with_splits(paged, rel):
    p = paged([200_000], [300], 4, 128, 256, torch.bfloat16, "cuda")
    q = torch.randn(300, 28, 128, dtype=torch.bfloat16, device="cuda")
    ref = TorchReferenceBackend().forward(
        q.float(), p.k_cache.float(), p.v_cache.float(), p.meta, 0.088
    )
    for splits in (1, 16, None):
        out = run_extend(p, q, 0.088, max_seq_len=200_000, num_splits=splits)
        assert rel(out, ref) < 1e-2, splits
