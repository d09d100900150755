"""Decode through CUDA graphs: static inputs, buckets and padding agree with the eager path.

Off the GPU the graph path runs with "eager replay" (the same static buffers and padding, the
forward re-run instead of a graph) over the Triton kernels in the interpreter, so everything but
the graph itself is checked on CPU. On a GPU (marked gpu) real graphs are compared with eager
decoding token for token.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    if "runtime.kernels.triton_decode" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("Triton kernels were imported without the interpreter", allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (as kernels/conftest)

from memory.device_pool import DevicePagePool  # noqa: E402
from memory.kv_layout import KVLayout  # noqa: E402
from runtime.config import ModelConfig  # noqa: E402
from runtime.engine.cuda_graphs import DecodeGraphs, bucket_for, decode_rows  # noqa: E402
from runtime.engine.engine import Engine, EngineConfig  # noqa: E402
from runtime.engine.kv_pages import PrivatePages  # noqa: E402
from runtime.engine.model_runner import Work  # noqa: E402
from runtime.engine.sampling import SamplingParams  # noqa: E402
from runtime.engine.sequence import BlockTable, Sequence  # noqa: E402
from runtime.kernels.triton_backend import TritonBackend  # noqa: E402
from runtime.models import build_model  # noqa: E402

CPU_CFG = ModelConfig(family="qwen2", vocab_size=97, hidden_size=64, intermediate_size=128,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                      max_position_embeddings=128, attention_bias=True)  # fmt: skip
GPU_CFG = ModelConfig(family="qwen2", vocab_size=1024, hidden_size=512, intermediate_size=1024,
                      num_layers=3, num_heads=8, num_kv_heads=2, head_dim=64,
                      max_position_embeddings=4096, attention_bias=True)  # fmt: skip
# The static path on CPU needs the interpreter, which is only on when no GPU is there.
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests cover it there")
PROMPTS = [[5, 17, 33, 2, 9, 71, 40, 40, 13, 8, 61], [3, 1, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9]]


def random_model(cfg: ModelConfig, device: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)  # large enough that greedy paths differ between prompts
    return m.to(device=device, dtype=dtype).eval()


def make_engine(model, cfg, device, dtype, page_size, graphs, buckets=(1, 2, 4), splits=2,
                pipeline=None):
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size, dtype)
    kv = PrivatePages(DevicePagePool(layout, 256, device))
    kv.pool.data.normal_()  # never decode against zeros: unread pages must stay unread
    # A fixed split count: eager and graph decode then run the very same kernels.
    engine = Engine(model, kv, TritonBackend(decode_splits=splits),
                    max_context=cfg.max_position_embeddings, device=device,
                    config=EngineConfig(prefill_chunk=16, max_batch_tokens=32,
                                        pipeline_decode=pipeline))  # fmt: skip
    r = engine.runner
    r.graphs = (DecodeGraphs(model, r.kv_views, r.backend, page_size, r.device,
                             max_context=cfg.max_position_embeddings, buckets=buckets)
                if graphs else None)  # fmt: skip
    return engine


def generate(engine, prompts, n=10):
    seqs = [engine.new_sequence() for _ in prompts]
    for s, p in zip(seqs, prompts):
        engine.extend(s, p)
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for _ in prompts]
    return [r.tokens for r in engine.generate_batch(seqs, params)], seqs


# -- pure logic ----------------------------------------------------------------------------------


def test_bucket_is_the_smallest_that_fits():
    buckets = (1, 2, 4, 8)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


def test_decode_rows_name_the_token_position_and_slot():
    seq = Sequence(table=BlockTable(torch.device("cpu")), tokens=list(range(100, 106)))
    seq.table.append([7, 2])
    rows = decode_rows([Work(seq, 5, 6, True)], page_size=4)
    assert rows.ids == [105] and rows.positions == [5] and rows.seq_lens == [6]
    assert rows.slots == [2 * 4 + 1]  # position 5 is offset 1 of the second page (page 2)


# -- the static path on CPU (eager replay over the interpreter) ----------------------------------


@pytest.fixture(scope="module")
def cpu_model():
    return random_model(CPU_CFG, "cpu", torch.float32)


@cpu_only
def test_static_path_matches_eager(cpu_model):
    args = (cpu_model, CPU_CFG, "cpu", torch.float32, 4)
    eager, _ = generate(make_engine(*args, graphs=False), PROMPTS)
    engine = make_engine(*args, graphs=True)
    got, _ = generate(engine, PROMPTS)  # 3 rows in bucket 4, tables growing across pages
    assert got == eager
    assert engine.runner.graphs.replays >= 9


@cpu_only
def test_pipelined_static_path_matches_eager(cpu_model):
    # Token ids reach the static buffers from the device, not the host lists.
    args = (cpu_model, CPU_CFG, "cpu", torch.float32, 4)
    eager, _ = generate(make_engine(*args, graphs=False, pipeline=False), PROMPTS)
    engine = make_engine(*args, graphs=True, pipeline=True)
    got, _ = generate(engine, PROMPTS)
    assert got == eager
    assert engine.runner.graphs.replays >= 9


@cpu_only
def test_padding_rows_write_nothing(cpu_model):
    engine = make_engine(cpu_model, CPU_CFG, "cpu", torch.float32, 4, graphs=True)
    seqs = [engine.new_sequence() for _ in PROMPTS]
    for s, p in zip(seqs, PROMPTS):
        engine.extend(s, p)
        s.tokens.append(3)  # one pending token each: a decode step of 3 rows in bucket 4
    before = engine.kv.pool.data.clone()
    engine._run([Work(s, s.num_computed, len(s.tokens), True) for s in seqs])
    assert engine.runner.graphs.replays == 1
    diff = engine.kv.pool.data != before  # (pages, layers, 2, page_size, kv_heads, head_dim)
    page, slot = diff.permute(0, 3, 1, 2, 4, 5).flatten(2).any(-1).nonzero(as_tuple=True)
    written = {(s.pages[(len(s) - 1) // 4], (len(s) - 1) % 4) for s in seqs}
    assert set(zip(page.tolist(), slot.tolist())) == written


@cpu_only
def test_work_the_graphs_cannot_take_runs_eagerly(cpu_model):
    engine = make_engine(cpu_model, CPU_CFG, "cpu", torch.float32, 4, graphs=True, buckets=(1, 2))
    graphs = engine.runner.graphs
    seq = engine.new_sequence()
    engine.extend(seq, PROMPTS[0])
    n = len(seq)
    one = Work(seq, n - 1, n, True)
    assert graphs.accepts([one]) and graphs.accepts([one, one])
    assert not graphs.accepts([one] * 3)  # past the largest bucket
    assert not graphs.accepts([Work(seq, n - 2, n, True)])  # two tokens: prefill
    assert not graphs.accepts([Work(seq, CPU_CFG.max_position_embeddings,
                                    CPU_CFG.max_position_embeddings + 1, True)])  # fmt: skip
    assert not graphs.accepts([])


@cpu_only
def test_regrown_rope_cache_is_captured_again(cpu_model):
    engine = make_engine(cpu_model, CPU_CFG, "cpu", torch.float32, 4, graphs=True)
    generate(engine, PROMPTS[:1], n=3)
    graphs = engine.runner.graphs
    assert graphs.captures == 1
    graphs.rotary.ensure(4 * CPU_CFG.max_position_embeddings, graphs.device)  # new tensors
    generate(engine, PROMPTS[:1], n=3)
    assert graphs.captures == 2


# -- real graphs on a GPU --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_model():
    return random_model(GPU_CFG, "cuda", torch.bfloat16)


@pytest.mark.gpu
def test_graphs_are_on_by_default_on_cuda(gpu_model):
    layout = KVLayout(GPU_CFG.num_layers, GPU_CFG.num_kv_heads, GPU_CFG.head_dim, 16,
                      torch.bfloat16)  # fmt: skip
    engine = Engine(gpu_model, PrivatePages(DevicePagePool(layout, 64, "cuda")), TritonBackend(),
                    max_context=GPU_CFG.max_position_embeddings, device="cuda")  # fmt: skip
    generate(engine, PROMPTS[:1], n=4)
    assert engine.runner.graphs is not None and engine.runner.graphs.replays == 3


def long_prompts(batch: int) -> list[list[int]]:
    """Prompts long enough that decode crosses pages and uses several splits."""
    torch.manual_seed(batch)
    return [torch.randint(0, GPU_CFG.vocab_size, (300 + 37 * i,)).tolist() for i in range(batch)]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_tokens_equal_eager_tokens(gpu_model, batch):
    # A bucket of exactly the batch: the matmuls see eager's shapes, so the tokens must match.
    args = (gpu_model, GPU_CFG, "cuda", torch.bfloat16, 16)
    eager, _ = generate(make_engine(*args, graphs=False, splits=4), long_prompts(batch), n=40)
    engine = make_engine(*args, graphs=True, splits=4, buckets=(1, 2, 3))
    got, _ = generate(engine, long_prompts(batch), n=40)
    assert engine.runner.graphs.replays >= 39  # and a prefill's one-token last chunk, if any
    assert got == eager


@pytest.mark.gpu
def test_padded_graph_rows_write_nothing_and_agree(gpu_model):
    args = (gpu_model, GPU_CFG, "cuda", torch.bfloat16, 16)
    logits = []
    for graphs in (False, True):
        engine = make_engine(*args, graphs=graphs, splits=4, buckets=(1, 2, 4, 8))
        seqs = [engine.new_sequence() for _ in range(3)]
        for s, p in zip(seqs, long_prompts(3)):
            engine.extend(s, p)
            s.tokens.append(5)  # 3 rows in bucket 4: one padding row
        before = engine.kv.pool.data.clone()
        engine._run([Work(s, s.num_computed, len(s.tokens), True) for s in seqs])
        diff = engine.kv.pool.data != before
        page, slot = diff.permute(0, 3, 1, 2, 4, 5).flatten(2).any(-1).nonzero(as_tuple=True)
        written = {(s.pages[(len(s) - 1) // 16], (len(s) - 1) % 16) for s in seqs}
        assert set(zip(page.tolist(), slot.tolist())) == written
        logits.append(torch.stack([s.last_logits for s in seqs]))
    err = (logits[1] - logits[0]).norm() / logits[0].norm()
    assert err < 1e-2  # bf16 matmuls of 4 rows versus 3 may round differently


@pytest.mark.gpu
def test_graph_logits_equal_eager_logits_at_batch_one(gpu_model):
    prompt = torch.randint(0, GPU_CFG.vocab_size, (500,)).tolist()
    logits = []
    for graphs in (False, True):
        engine = make_engine(gpu_model, GPU_CFG, "cuda", torch.bfloat16, 16, graphs, splits=4)
        seq = engine.new_sequence()
        engine.extend(seq, prompt + [7])
        seq.last_logits = None
        seq.tokens.append(11)  # one decode step of one row: bucket 1, the eager shapes
        engine._run([Work(seq, len(seq) - 1, len(seq), True)])
        logits.append(seq.last_logits)
    assert torch.equal(logits[0], logits[1])
