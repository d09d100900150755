"""The engine on DeepSeek models: MLA's latent rows and DeepSeek-V4's compressed-attention rows
(window key, compressor inputs, compressed entries, indexer keys) live in the KV pages.

So every cache kind is paged and hash-chained with the tokens: greedy output through the
engine (uneven prefill chunks, batched sequences) equals one sequence run alone through the
model test runner (exact against transformers, tests/runtime/test_deepseek_v4.py and
test_mla_models.py); fork and truncate stay exact; over a tiered cache, prefix reuse, eviction
to disk and a new process (a real one, reading the page files) give identical greedy output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
from tests.runtime.engine.test_hybrid_engine import PAGE, N, alone, generate
from tests.runtime.helpers import prompt_ids
from tests.runtime.test_deepseek_v4 import CASES as V4_CASES
from tests.runtime.test_deepseek_v4 import tiny_v4
from tests.runtime.test_mla_models import CASES as MLA_CASES
from tests.runtime.test_mla_models import tiny_mla

FP = b"d" * 32
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module", params=["deepseek_v4", "deepseek_v3"])
def saved(request, tmp_path_factory):
    """(checkpoint folder, loaded model)."""
    if request.param == "deepseek_v4":
        hf = tiny_v4(V4_CASES[0][1])
    else:
        hf = tiny_mla(MLA_CASES[0][1], MLA_CASES[0][2])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return path, load_model(path, dtype=torch.float32)


def layout_of(cfg) -> KVLayout:
    planes, heads, dim = cfg.kv_row()
    return KVLayout(cfg.num_layers, heads, dim, PAGE, torch.float32, planes)


def make_engine(loaded, kv=None, chunk=7):
    kv = kv or PrivatePages(DevicePagePool(layout_of(loaded.config), 96))
    return Engine(loaded.model, kv, TorchReferenceBackend(), max_context=256,
                  config=EngineConfig(prefill_chunk=chunk, max_batch_tokens=16))


def tiered(loaded, disk):
    return make_engine(loaded, TieredKVCache(layout_of(loaded.config), 64, 64, FP,
                                             disk_dir=disk), chunk=5)


PROMPTS = [prompt_ids(256, 45, seed=1), prompt_ids(256, 9, seed=2), prompt_ids(256, 26, seed=3)]


def test_rows_are_the_page_layout(saved):
    cfg = saved[1].config
    layout = layout_of(cfg)
    assert layout.planes == 1 and layout.page_shape[1:4] == (1, PAGE, 1)
    assert layout.bytes_per_token == cfg.num_layers * cfg.kv_row()[2] * 4


def test_batched_engine_matches_each_sequence_alone(saved):
    loaded = saved[1]
    engine = make_engine(loaded)
    seqs = [engine.new_sequence() for _ in PROMPTS]
    for s, p in zip(seqs, PROMPTS):
        engine.restore(s, p)
    results = engine.generate_batch(seqs, [SamplingParams(max_tokens=N)] * len(seqs))
    assert [r.tokens for r in results] == [alone(loaded, p) for p in PROMPTS]


def test_fork_and_truncate_continue_exactly(saved):
    loaded = saved[1]
    engine = make_engine(loaded)
    prompt = PROMPTS[0]
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    child = engine.fork(seq)
    assert generate(engine, child) == alone(loaded, prompt)
    generate(engine, seq, 5)
    engine.truncate(seq, 29)  # mid-page and mid-window: rows after 29 are recomputed
    engine.extend(seq, prompt[29:])
    assert generate(engine, seq) == alone(loaded, prompt)


def test_prefix_reuse_and_disk_eviction_are_exact(saved, tmp_path):
    loaded = saved[1]
    engine = tiered(loaded, tmp_path)
    first = engine.new_sequence()
    engine.extend(first, PROMPTS[0])
    assert generate(engine, first) == alone(loaded, PROMPTS[0])
    engine.release(first)
    engine.kv.evict_all_to_disk()
    second = engine.new_sequence()
    result = engine.extend(second, PROMPTS[0])
    assert result.cached_tokens == 5 * PAGE and result.cached_by_tier == {"disk": 5 * PAGE}
    assert generate(engine, second) == alone(loaded, PROMPTS[0])
    engine.kv.close()


_CHILD = """
import json, sys, torch
from memory.kv_cache import TieredKVCache
from runtime.loader import load_model
from tests.runtime.engine.test_deepseek_engine import FP, generate, layout_of, make_engine
path, disk, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
loaded = load_model(path, dtype=torch.float32)
kv = TieredKVCache(layout_of(loaded.config), 64, 64, FP, disk_dir=disk)
engine = make_engine(loaded, kv, chunk=5)
seq = engine.new_sequence()
result = engine.extend(seq, prompt)
print(json.dumps({"cached": result.cached_tokens, "tokens": generate(engine, seq)}))
kv.close()
"""


def test_a_new_process_resumes_from_the_page_files(saved, tmp_path):
    path, loaded = saved
    engine = tiered(loaded, tmp_path)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPTS[0])
    engine.kv.close()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(tmp_path),
                          json.dumps(PROMPTS[0])], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cached"] >= 5 * PAGE
    assert got["tokens"] == alone(loaded, PROMPTS[0])
