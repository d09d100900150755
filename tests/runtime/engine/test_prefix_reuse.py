"""The engine over tiered KV: reuse, eviction, restart, corruption, fork and truncate stay exact."""

from __future__ import annotations

import pytest
import torch

from memory.kv_cache import TieredKVCache
from memory.kv_layout import KVLayout
from runtime.engine.engine import Engine, EngineConfig
from runtime.engine.sampling import SamplingParams
from runtime.kernels.torch_ref import TorchReferenceBackend

from .test_engine import CFG, PROMPT, greedy, make_engine

PAGE = 4
FP = b"f" * 32


def tiered_engine(model, disk, fingerprint=FP, device_pages=64, host_pages=64):
    layout = KVLayout(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, PAGE, torch.float32)
    kv = TieredKVCache(layout, device_pages, host_pages, fingerprint, disk_dir=disk)
    return Engine(model, kv, TorchReferenceBackend(), max_context=CFG.max_position_embeddings,
                  config=EngineConfig(prefill_chunk=5, max_batch_tokens=16))


LONG = PROMPT * 3  # 33 tokens: 8 full pages


@pytest.fixture
def reference(model):
    return greedy(make_engine(model, page_size=PAGE), LONG, n=10)[0]


def run(engine, prompt=LONG, n=10):
    seq = engine.new_sequence()
    result = engine.extend(seq, prompt)
    tokens = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=n))]
    return tokens, result, seq


def test_second_sequence_reuses_the_prefix(model, reference, tmp_path):
    engine = tiered_engine(model, tmp_path)
    first, r1, s1 = run(engine)
    second, r2, _ = run(engine)
    assert first == second == reference
    assert r1.cached_tokens == 0
    assert r2.cached_tokens == (len(LONG) - 1) // PAGE * PAGE
    assert r2.cached_by_tier == {"device": r2.cached_tokens}
    assert r2.computed_tokens == len(LONG) - r2.cached_tokens


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_exact_after_eviction(model, reference, tmp_path, tier):
    engine = tiered_engine(model, tmp_path)
    _, _, seq = run(engine)
    engine.release(seq)
    getattr(engine.kv, f"evict_all_to_{tier}")()
    tokens, result, _ = run(engine)
    assert tokens == reference
    assert result.cached_by_tier == {tier: (len(LONG) - 1) // PAGE * PAGE}


def test_exact_after_a_restart_from_disk(model, reference, tmp_path):
    engine = tiered_engine(model, tmp_path)
    run(engine)
    engine.kv.flush()
    engine.kv.close()
    fresh = tiered_engine(model, tmp_path)  # a new process: empty device and host tiers
    tokens, result, _ = run(fresh)
    assert tokens == reference
    assert result.cached_by_tier == {"disk": (len(LONG) - 1) // PAGE * PAGE}


def test_another_fingerprint_never_reuses(model, reference, tmp_path):
    engine = tiered_engine(model, tmp_path)
    run(engine)
    engine.kv.flush()
    other = tiered_engine(model, tmp_path, fingerprint=b"g" * 32)
    tokens, result, _ = run(other)
    assert result.cached_tokens == 0 and tokens == reference


def test_corrupt_page_files_are_recomputed(model, reference, tmp_path):
    engine = tiered_engine(model, tmp_path)
    run(engine)
    engine.kv.flush()
    files = sorted((tmp_path / "kv").rglob("*.page"))
    assert len(files) >= 8
    data = bytearray(files[3].read_bytes())
    data[-7] ^= 0xFF  # a flipped bit in the payload
    files[3].write_bytes(bytes(data))
    files[5].write_bytes(files[5].read_bytes()[:100])  # a truncated file
    fresh = tiered_engine(model, tmp_path)
    tokens, result, _ = run(fresh)
    assert tokens == reference
    assert 0 < result.cached_tokens < (len(LONG) - 1) // PAGE * PAGE


def test_fork_and_truncate_exact_with_sharing(model, reference, tmp_path):
    engine = tiered_engine(model, tmp_path)
    seq = engine.new_sequence()
    engine.extend(seq, LONG)
    child = engine.fork(seq)
    a = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))]
    b = [e.token_id for e in engine.generate(child, SamplingParams(max_tokens=10))]
    assert a == b == reference
    engine.truncate(seq, len(LONG))
    c = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))]
    assert c == reference
    engine.truncate(child, 13)
    d = [e.token_id for e in engine.generate(child, SamplingParams(max_tokens=10))]
    assert d == greedy(make_engine(model, page_size=PAGE), LONG[:13], n=10)[0]


def test_small_device_pool_spills_and_stays_exact(model, reference, tmp_path):
    engine = tiered_engine(model, tmp_path, device_pages=12, host_pages=8)
    for _ in range(3):
        tokens, _, seq = run(engine)
        assert tokens == reference
        engine.release(seq)
    other = PROMPT[::-1] * 3
    _, _, seq = run(engine, other)
    engine.release(seq)
    tokens, result, _ = run(engine)
    assert tokens == reference and result.cached_tokens > 0
