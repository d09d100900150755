"""The engine on hybrid models (Qwen3.5 Gated DeltaNet, Nemotron-H Mamba-2): each sequence's
linear-layer state lives in a slot beside its pages.

Greedy output through the engine (uneven prefill chunks, batched prefill and decode of
sequences of different lengths) equals one sequence run alone through the model test runner
(itself exact against transformers, tests/runtime/test_hybrid_models.py); fork, truncate and
release stay exact. Over a tiered cache, state snapshots every k pages let reuse, rewind, fork
and a new process resume at the nearest snapshot with identical greedy output; pages without
a snapshot are not reused, and a corrupt snapshot file is recomputed.
"""

from __future__ import annotations

import pytest
import torch

from memory.device_pool import DevicePagePool
from memory.kv_cache import TieredKVCache
from memory.kv_layout import KVLayout
from runtime.engine.engine import Engine, EngineConfig
from runtime.engine.kv_pages import PrivatePages
from runtime.engine.sampling import SamplingParams
from runtime.kernels.torch_ref import TorchReferenceBackend
from runtime.loader import load_model
from tests.runtime.helpers import PagedRunner, prompt_ids
from tests.runtime.test_hybrid_models import tiny_hybrid, tiny_nemotron

PAGE, N = 8, 12


@pytest.fixture(scope="module", params=["qwen3_5", "nemotron_h"])
def loaded(request, tmp_path_factory):
    hf = tiny_hybrid("Qwen3_5TextConfig", {}) if request.param == "qwen3_5" else tiny_nemotron()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return load_model(path, dtype=torch.float32)


def make_engine(loaded, kv=None, chunk=7):
    cfg = loaded.config
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, PAGE, torch.float32)
    kv = kv or PrivatePages(DevicePagePool(layout, 128))
    return Engine(loaded.model, kv, TorchReferenceBackend(), max_context=256,
                  config=EngineConfig(prefill_chunk=chunk, max_batch_tokens=16))


def generate(engine, seq, n=N):
    return [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=n))]


_ALONE: dict[tuple, list[int]] = {}


def alone(loaded, prompt, n=N):
    """Greedy tokens of `prompt` run alone through the model test runner (computed once)."""
    key = (id(loaded), tuple(prompt), n)
    if key not in _ALONE:
        runner = PagedRunner(loaded.model, loaded.config, page_size=PAGE)
        _ALONE[key] = runner.greedy(prompt, n, [64])
    return _ALONE[key]


PROMPTS = [prompt_ids(256, 37, seed=1), prompt_ids(256, 9, seed=2), prompt_ids(256, 20, seed=3)]


def test_batched_engine_matches_each_sequence_alone(loaded):
    engine = make_engine(loaded)
    seqs = [engine.new_sequence() for _ in PROMPTS]
    for s, p in zip(seqs, PROMPTS):
        engine.restore(s, p)  # computed together with the first decode step, batched
    results = engine.generate_batch(seqs, [SamplingParams(max_tokens=N)] * len(seqs))
    assert [r.tokens for r in results] == [alone(loaded, p) for p in PROMPTS]


def test_fork_and_truncate_continue_exactly(loaded):
    engine = make_engine(loaded)
    prompt = PROMPTS[0]
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    child = engine.fork(seq)
    assert generate(engine, child) == alone(loaded, prompt)
    generate(engine, seq, 5)
    engine.truncate(seq, 30)  # back into the prompt: the state before token 30 is recomputed
    engine.extend(seq, prompt[30:])
    assert generate(engine, seq) == alone(loaded, prompt)


def test_release_and_reuse_of_the_slot(loaded):
    engine = make_engine(loaded)
    a = engine.new_sequence()
    engine.extend(a, PROMPTS[1])
    engine.release(a)
    b = engine.new_sequence()
    engine.extend(b, PROMPTS[2])
    assert generate(engine, b) == alone(loaded, PROMPTS[2])


def test_pages_without_a_snapshot_are_not_reused(loaded, tmp_path):
    engine = snapshot_engine(loaded, tmp_path, every=100)  # no page boundary gets one
    for _ in range(2):
        seq = engine.new_sequence()
        result = engine.extend(seq, PROMPTS[0])
        assert result.cached_tokens == 0
        assert generate(engine, seq) == alone(loaded, PROMPTS[0])
        engine.release(seq)
    engine.kv.close()


def snapshot_engine(loaded, disk, every=2, host_max=64):
    """An engine over a tiered cache whose state snapshots are taken every `every` pages."""
    cfg = loaded.config
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, PAGE, torch.float32)
    kv = TieredKVCache(layout, 64, 64, b"h" * 32, disk_dir=disk)
    kv.snapshots.every_pages, kv.snapshots.host_max = every, host_max
    return make_engine(loaded, kv=kv, chunk=PAGE)


def test_reuse_resumes_from_the_nearest_snapshot(loaded, tmp_path):
    engine = snapshot_engine(loaded, tmp_path)
    prompt = PROMPTS[0]  # 37 tokens: 4 full pages, snapshots after pages 2 and 4
    first = engine.new_sequence()
    engine.extend(first, prompt)
    assert generate(engine, first) == alone(loaded, prompt)
    second = engine.new_sequence()
    result = engine.extend(second, prompt)
    assert result.cached_tokens == 4 * PAGE and result.computed_tokens == 37 - 4 * PAGE
    assert generate(engine, second) == alone(loaded, prompt)


def test_truncate_and_fork_restore_a_snapshot(loaded, tmp_path):
    engine = snapshot_engine(loaded, tmp_path)
    prompt = PROMPTS[0]
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    generate(engine, seq, 5)
    engine.truncate(seq, 30)  # the snapshot after page 2 (16 tokens); 14 tokens recomputed
    assert seq.num_computed == 2 * PAGE
    engine.extend(seq, prompt[30:])
    child = engine.fork(seq)
    assert generate(engine, seq) == alone(loaded, prompt)
    assert generate(engine, child) == alone(loaded, prompt)


def test_a_new_process_resumes_from_disk_and_a_corrupt_snapshot_is_recomputed(loaded, tmp_path):
    prompt = PROMPTS[0]
    engine = snapshot_engine(loaded, tmp_path)
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    engine.kv.close()
    files = sorted(tmp_path.rglob("*.state"))
    assert len(files) == 2
    fresh = snapshot_engine(loaded, tmp_path)  # nothing in memory: pages and states from disk
    seq = fresh.new_sequence()
    assert fresh.extend(seq, prompt).cached_tokens == 4 * PAGE
    assert generate(fresh, seq) == alone(loaded, prompt)
    fresh.kv.close()
    for f in files:  # flip a byte of every snapshot's payload
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    again = snapshot_engine(loaded, tmp_path)
    seq = again.new_sequence()
    assert again.extend(seq, prompt).cached_tokens == 0
    assert generate(again, seq) == alone(loaded, prompt)
    again.kv.close()
