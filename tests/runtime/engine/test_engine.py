"""The engine on a tiny random Llama: chunking, batching, fork, truncate and stops agree."""

from __future__ import annotations

import pytest
import torch

from memory.device_pool import DevicePagePool
from memory.kv_layout import KVLayout
from runtime.config import ModelConfig
from runtime.engine.engine import Engine, EngineConfig
from runtime.engine.kv_pages import PrivatePages
from runtime.engine.sampling import SamplingParams
from runtime.errors import ContextTooLong, InvalidSampling, OutOfPages
from runtime.kernels.torch_ref import TorchReferenceBackend

CFG = ModelConfig(family="llama", vocab_size=97, hidden_size=64, intermediate_size=128,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  max_position_embeddings=256)


def make_engine(model, page_size=4, num_pages=256, chunk=5, kv=None):
    layout = KVLayout(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, page_size, torch.float32)
    kv = kv or PrivatePages(DevicePagePool(layout, num_pages))
    return Engine(model, kv, TorchReferenceBackend(), max_context=CFG.max_position_embeddings,
                  config=EngineConfig(prefill_chunk=chunk, max_batch_tokens=max(chunk, 16)))


def greedy(engine, prompt, n=12):
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    events = list(engine.generate(seq, SamplingParams(max_tokens=n)))
    return [e.token_id for e in events], seq


PROMPT = [5, 17, 33, 2, 9, 71, 40, 40, 13, 8, 61]


def test_chunk_and_page_size_do_not_change_output(model):
    ref, _ = greedy(make_engine(model, page_size=16, chunk=64), PROMPT)
    for page_size, chunk in [(1, 1), (3, 2), (4, 5), (8, 7)]:
        got, _ = greedy(make_engine(model, page_size=page_size, chunk=chunk), PROMPT)
        assert got == ref, (page_size, chunk)


def test_batch_matches_single(model):
    prompts = [PROMPT, PROMPT[:3], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    engine = make_engine(model)
    singles = [greedy(engine, p)[0] for p in prompts]
    seqs = [engine.new_sequence() for _ in prompts]
    for s, p in zip(seqs, prompts):
        engine.extend(s, p)
    results = engine.generate_batch(seqs, [SamplingParams(max_tokens=12)] * 3)
    assert [r.tokens for r in results] == singles


def test_fork_continues_like_the_parent(model):
    engine = make_engine(model)
    ref, _ = greedy(engine, PROMPT, n=10)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    child = engine.fork(seq)
    a = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))]
    b = [e.token_id for e in engine.generate(child, SamplingParams(max_tokens=10))]
    assert a == b == ref


def test_truncate_then_regenerate_is_exact(model):
    engine = make_engine(model)
    ref, seq = greedy(engine, PROMPT, n=10)
    engine.extend(seq, [3, 4, 5, 6, 7, 8, 9])
    list(engine.generate(seq, SamplingParams(max_tokens=5)))
    for n in (len(PROMPT), len(PROMPT) - 3, 8):  # mid-page and page-aligned cut points
        engine.truncate(seq, n)
        got = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))]
        assert got == greedy(make_engine(model), PROMPT[:n], n=10)[0]


def test_release_returns_every_page(model):
    engine = make_engine(model, num_pages=64)
    free = engine.kv.pool.num_free
    _, seq = greedy(engine, PROMPT)
    child = engine.fork(seq)
    engine.release(seq)
    engine.release(child)
    assert engine.kv.pool.num_free == free


def test_out_of_pages_is_a_clear_error(model):
    engine = make_engine(model, page_size=4, num_pages=2)
    with pytest.raises(OutOfPages, match="KV pages"):
        engine.extend(engine.new_sequence(), PROMPT)


def test_max_tokens_and_stop_ids(model):
    engine = make_engine(model)
    ref, _ = greedy(engine, PROMPT, n=12)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    events = list(engine.generate(seq, SamplingParams(max_tokens=12, stop_token_ids=(ref[4],))))
    assert [e.token_id for e in events] == ref[: ref.index(ref[4]) + 1]
    assert events[-1].finish_reason == "stop"
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    events = list(engine.generate(seq, SamplingParams(max_tokens=3)))
    assert len(events) == 3 and events[-1].finish_reason == "length"


def test_seeded_sampling_reproduces(model):
    engine = make_engine(model)
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=7, max_tokens=15)
    runs = []
    for _ in range(2):
        seq = engine.new_sequence()
        engine.extend(seq, PROMPT)
        runs.append([e.token_id for e in engine.generate(seq, params)])
    assert runs[0] == runs[1]


def test_context_too_long_names_both_lengths(model):
    engine = make_engine(model)
    with pytest.raises(ContextTooLong, match="300 tokens.*grow to 256"):
        engine.extend(engine.new_sequence(), [1] * 300)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                    dict(top_k=-2), dict(max_tokens=0), dict(seed=-1)])
def test_invalid_sampling(kwargs):
    with pytest.raises(InvalidSampling):
        SamplingParams(**kwargs)


class OnlyTokens:
    """A constraint allowing a fixed sequence of tokens, then finished."""

    def __init__(self, tokens):
        self.tokens, self.i = list(tokens), 0

    def allowed(self, vocab_size):
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[self.tokens[self.i]] = True
        return mask

    def advance(self, token):
        assert token == self.tokens[self.i]
        self.i += 1

    def finished(self):
        return self.i == len(self.tokens)


def test_a_constraint_decides_the_tokens(model):
    engine = make_engine(model)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=20,
                            constraint=OnlyTokens([7, 8, 9]))
    events = list(engine.generate(seq, params))
    assert [e.token_id for e in events] == [7, 8, 9]
    assert events[-1].finish_reason == "stop"


def test_fused_projections_give_the_same_tokens(model):
    import copy

    ref, _ = greedy(make_engine(model), PROMPT, n=16)
    fused = copy.deepcopy(model)
    fused.fuse_projections()
    assert not any("q_proj" in n or "gate_proj" in n for n, _ in fused.named_parameters())
    got, _ = greedy(make_engine(fused), PROMPT, n=16)
    assert got == ref


def test_extend_reports_progress_per_chunk(model):
    engine = make_engine(model, chunk=5)
    calls = []
    engine.extend(engine.new_sequence(), PROMPT, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(5, 11), (10, 11), (11, 11)]
