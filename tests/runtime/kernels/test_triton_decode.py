"""The split-KV decode kernel and the LSE merge against the torch reference."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_ref import TorchReferenceBackend
from runtime.kernels.triton_decode import DecodeConfig, decode_attention, merge_splits
from tests.runtime.kernels.on_device import DEVICE, fp32_tol

LENS = [1, 16, 37, 129, 200]  # one key, one exact page, and lengths off every block size


def reference(p, q, scale):
    ref = TorchReferenceBackend()
    return ref.forward(q.double(), p.k_cache.double(), p.v_cache.double(), p.meta, scale)


def check(paged, rel, lens, group, head_dim, page_size, kv_heads=2, **kw):
    p = paged(lens, [1] * len(lens), kv_heads, head_dim, page_size, torch.float32, DEVICE)
    q = torch.randn(len(lens), kv_heads * group, head_dim, device=DEVICE)
    m = p.meta
    out = decode_attention(q, p.k_cache, p.v_cache, m.block_tables, m.seq_lens, 0.1, **kw)
    assert out.shape == q.shape
    assert rel(out, reference(p, q, 0.1)) < fp32_tol()


@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 7])
def test_decode_matches_reference(paged, rel, group, head_dim, page_size, num_splits):
    check(paged, rel, LENS, group, head_dim, page_size, num_splits=num_splits)


def test_decode_tile_wider_than_page(paged, rel):
    cfg = DecodeConfig(block_n=32, num_warps=1, num_stages=1)
    check(paged, rel, LENS, 7, 64, 16, kv_heads=1, num_splits=2, config=cfg)


def test_decode_more_splits_than_blocks(paged, rel):
    # 16 splits over sequences of 1..200 keys: most splits are empty.
    check(paged, rel, LENS, 4, 64, 16, num_splits=16)


def test_decode_non_power_of_two_head_dim(paged, rel):
    check(paged, rel, LENS, 3, 96, 16, num_splits=2)


def test_merge_weights_splits_by_lse():
    # Two halves of one softmax: merging their normalised outputs by LSE gives the whole.
    torch.manual_seed(0)
    s = torch.randn(3, 2, 40, device=DEVICE)  # (T, H, keys) scores in base 2
    v = torch.randn(40, 8, device=DEVICE)
    parts, lses = [], []
    for lo, hi in ((0, 17), (17, 40)):
        w = torch.softmax(s[..., lo:hi] * torch.log(torch.tensor(2.0)), -1)
        parts.append(w @ v[lo:hi])
        lses.append(
            torch.logsumexp(s[..., lo:hi] * torch.log(torch.tensor(2.0)), -1) / 0.6931471805599453
        )
    parts.append(torch.zeros(3, 2, 8, device=DEVICE))  # an empty split
    lses.append(torch.full((3, 2), float("-inf"), device=DEVICE))
    out = merge_splits(torch.stack(parts, 2), torch.stack(lses, 2),
                       torch.empty(3, 2, 8, device=DEVICE))
    want = torch.softmax(s * torch.log(torch.tensor(2.0)), -1) @ v
    assert torch.allclose(out, want, atol=fp32_tol())


# ---- GPU, bf16, real sizes -------------------------------------------------------------------


@pytest.mark.gpu
def test_decode_gpu_qwen_shape(paged, rel):
    lens = [1, 255, 256, 70_001, 300_000]
    p = paged(lens, [1] * len(lens), 4, 128, 256, torch.bfloat16, "cuda")
    q = torch.randn(len(lens), 28, 128, dtype=torch.bfloat16, device="cuda")
    ref = TorchReferenceBackend().forward(
        q.float(), p.k_cache.float(), p.v_cache.float(), p.meta, 0.088
    )
    m = p.meta
    for splits in (1, 7, None):
        out = decode_attention(
            q, p.k_cache, p.v_cache, m.block_tables, m.seq_lens, 0.088, num_splits=splits
        )
        assert rel(out, ref) < 1e-2, splits


@pytest.mark.gpu
def test_decode_gpu_cuda_graph_replay(paged, rel):
    # Capture once, then grow the sequences (new values in the same tensors) and replay.
    lens = [5000, 130]
    p = paged([20_000, 20_000], [1, 1], 4, 128, 256, torch.bfloat16, "cuda")
    m = p.meta
    q = torch.randn(2, 28, 128, dtype=torch.bfloat16, device="cuda")
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    run = lambda: decode_attention(
        q, p.k_cache, p.v_cache, m.block_tables, seq_lens, 0.088, out=out
    )
    run()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for new_lens in ([5001, 131], [19_999, 7]):
        seq_lens.copy_(torch.tensor(new_lens))
        graph.replay()
        m2 = type(m)(
            **{
                **m.__dict__,
                "seq_lens": seq_lens,
                "seq_lens_cpu": new_lens,
                "query_lens_cpu": [1, 1],
            }
        )
        ref = TorchReferenceBackend().forward(
            q.float(), p.k_cache.float(), p.v_cache.float(), m2, 0.088
        )
        assert rel(out, ref) < 1e-2
