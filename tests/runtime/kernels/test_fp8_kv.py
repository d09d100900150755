"""fp8 KV pages: the layout (scales inside each head's row), quantization error, the reference
backend's store and attention over fp8 pages, and the fingerprint that keeps dtypes apart."""

from __future__ import annotations

import pytest
import torch

from memory.device_pool import DevicePagePool
from memory.hashing import model_fingerprint
from memory.kv_layout import FP8_KV, KVLayout
from runtime.engine.metadata import build_metadata
from runtime.kernels.fp8_kv import FP8_MAX, dequantize, quantize, split_fp8
from runtime.kernels.torch_ref import TorchReferenceBackend, attend_reference


def test_layout_holds_a_scale_per_token_and_head():
    bf16 = KVLayout(4, 8, 128, 256, torch.bfloat16)
    fp8 = KVLayout(4, 8, 128, 256, FP8_KV)
    assert fp8.page_shape == (4, 2, 256, 8, 132) and bf16.page_shape[-1] == 128
    assert fp8.page_bytes / bf16.page_bytes == pytest.approx(132 / 256)  # about half
    assert fp8.describe() != bf16.describe()


def test_fp8_pages_never_share_a_fingerprint_with_other_dtypes():
    prints = {model_fingerprint("w", torch.bfloat16, KVLayout(2, 2, 64, 16, dt), "rope", 1)
              for dt in (FP8_KV, torch.bfloat16, torch.float32)}  # fmt: skip
    assert len(prints) == 3


def test_quantization_error_is_e4m3s():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 32, generator=g) * torch.logspace(-3, 3, 64)[:, None, None]
    x[3, 1] = 0  # an all-zero row stays zero (no NaN from a zero scale)
    q, s = quantize(x)
    back = dequantize(q, s, torch.float32)
    assert q.dtype == FP8_KV and s.shape == (64, 4)
    assert back[3, 1].eq(0).all()
    amax = x.abs().amax(-1, keepdim=True)
    assert torch.allclose(back.abs().amax(-1, keepdim=True), amax, rtol=1 / 16)
    # 3 mantissa bits: half an ulp is 1/16 of the value; below 2^-6 of the scale, subnormals.
    tol = x.abs() / 16 + (amax / FP8_MAX) * 2.0**-9
    assert ((back - x).abs() <= tol * 1.0001).all()


def test_store_writes_values_and_scales_into_their_slots_only():
    layout = KVLayout(2, 2, 16, 4, FP8_KV)
    pool = DevicePagePool(layout, 5)
    k_cache, v_cache = pool.layer_views()[1]
    before = pool.data.clone()
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(6, 2, 16, generator=g), torch.randn(6, 2, 16, generator=g)
    meta = build_metadata([[3, 1]], [6], [6], 4, torch.device("cpu"))
    TorchReferenceBackend().store_kv(k_cache, v_cache, k, v, meta)
    for cache, x in ((k_cache, k), (v_cache, v)):
        values, scales = split_fp8(cache)
        rows = torch.cat([values[3], values[1, :2]]), torch.cat([scales[3], scales[1, :2]])
        got = dequantize(*rows, torch.float32)
        assert torch.allclose(got, x, rtol=1 / 16, atol=1e-6)
    changed = (pool.data.view(torch.uint8) != before.view(torch.uint8)).flatten(2).any(-1)
    # Only layer 1 of pages 3 and 1 changed (page 1: its first two slots only).
    assert changed.nonzero().tolist() == [[1, 1], [3, 1]]
    untouched = split_fp8(k_cache)[0][1, 2:].view(torch.uint8)
    assert untouched.eq(0).all()


@pytest.mark.parametrize("q_len, kv_len", [(1, 37), (9, 37), (37, 37)])
def test_attention_over_fp8_pages_is_close_to_full_precision(q_len, kv_len):
    g = torch.Generator().manual_seed(q_len)
    q = torch.randn(q_len, 4, 16, generator=g)
    k, v = torch.randn(kv_len, 2, 16, generator=g), torch.randn(kv_len, 2, 16, generator=g)
    layout = KVLayout(1, 2, 16, 8, FP8_KV)
    pool = DevicePagePool(layout, 8)
    k_cache, v_cache = pool.layer_views()[0]
    table = [6, 0, 4, 2, 7]
    meta = build_metadata([table], [kv_len], [q_len], 8, torch.device("cpu"))
    backend = TorchReferenceBackend()
    store = build_metadata([table], [kv_len], [kv_len], 8, torch.device("cpu"))
    backend.store_kv(k_cache, v_cache, k, v, store)
    got = backend.forward(q, k_cache, v_cache, meta, 0.25)
    ref = attend_reference(q, k, v, 0.25)
    assert ((got - ref).norm() / ref.norm()).item() < 0.04


def test_fp8_pages_come_back_from_disk_byte_for_byte(tmp_path):
    """Values and scales travel inside the page: a new process restores them exactly."""
    from memory.kv_cache import TieredKVCache

    layout = KVLayout(2, 2, 16, 4, FP8_KV)
    fp = model_fingerprint("w", torch.float32, layout, "rope", 1)
    tokens = list(range(12))
    g = torch.Generator().manual_seed(5)
    k, v = torch.randn(12, 2, 16, generator=g), torch.randn(12, 2, 16, generator=g)
    with TieredKVCache(layout, 8, 4, fp, tmp_path, None, "cpu") as first:
        hashes = first.page_hashes(tokens)
        pages = first.alloc(len(hashes))
        meta = build_metadata([pages], [12], [12], 4, torch.device("cpu"))
        for views in first.pool.layer_views():
            TorchReferenceBackend().store_kv(*views, k, v, meta)
        written = first.pool.data[pages].clone()
        for p, h in zip(pages, hashes):
            first.seal(p, h)
    with TieredKVCache(layout, 8, 4, fp, tmp_path, None, "cpu") as second:
        got = second.acquire(second.page_hashes(tokens))
        assert got.by_tier == {"disk": 3}
        restored = second.pool.data[list(got.pages)]
        assert torch.equal(restored.view(torch.uint8), written.view(torch.uint8))
