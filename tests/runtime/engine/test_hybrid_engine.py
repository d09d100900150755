"""The engine on hybrid models (Qwen3.5 Gated DeltaNet, Nemotron-H Mamba-2): each sequence's
linear-layer state lives in a slot beside its pages.

Greedy output through the engine (uneven prefill chunks, batched prefill and decode of
sequences of different lengths) equals one sequence run alone through the model test runner
(itself exact against transformers, tests/runtime/test_hybrid_models.py); fork, truncate,
release and a tiered prefix cache (whose pages alone cannot resume a hybrid sequence yet)
stay exact.
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


def test_tiered_cache_recomputes_rather_than_reuses_pages(loaded, tmp_path):
    cfg = loaded.config
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, PAGE, torch.float32)
    kv = TieredKVCache(layout, 64, 64, b"h" * 32, disk_dir=tmp_path)
    engine = make_engine(loaded, kv=kv)
    for _ in range(2):
        seq = engine.new_sequence()
        result = engine.extend(seq, PROMPTS[0])
        assert result.cached_tokens == 0
        assert generate(engine, seq) == alone(loaded, PROMPTS[0])
        engine.release(seq)
