"""Pipelined decode (the forward queued before the host sees its token) against step by step.

On CUDA the pipeline is the default; here it is forced on for a CPU engine and every result is
compared with the step-by-step path: tokens, text, finish reasons, and what a later turn sees.
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
from tests.runtime.engine.test_engine import CFG, PROMPT


def engine_for(model, pipeline: bool, page_size: int = 4, max_context: int | None = None):
    layout = KVLayout(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, page_size, torch.float32)
    kv = PrivatePages(DevicePagePool(layout, 256))
    return Engine(model, kv, TorchReferenceBackend(),
                  max_context=max_context or CFG.max_position_embeddings,
                  config=EngineConfig(prefill_chunk=5, max_batch_tokens=16,
                                      pipeline_decode=pipeline))  # fmt: skip


def run(engine, prompt, params):
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    events = list(engine.generate(seq, params))
    return events, seq


def both(model, prompt, params, **kw):
    out = []
    for pipeline in (False, True):
        events, seq = run(engine_for(model, pipeline, **kw), prompt, params)
        out.append(([e.token_id for e in events], events[-1].finish_reason, list(seq.tokens)))
    return out


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=20),
    SamplingParams(max_tokens=1),
    SamplingParams(max_tokens=2),
    SamplingParams(max_tokens=15, temperature=0.9, top_p=0.9, top_k=20, seed=7),
])  # fmt: skip
def test_same_tokens_as_step_by_step(model, params):
    step, piped = both(model, PROMPT, params)
    assert piped == step


def test_stop_token_ends_both_alike_and_the_next_turn_agrees(model):
    (tokens, _, _), _ = both(model, PROMPT, SamplingParams(max_tokens=12))
    stop = tokens[5]  # a token the model produces: make it a stop
    results = []
    for pipeline in (False, True):
        engine = engine_for(model, pipeline)
        events, seq = run(engine, PROMPT, SamplingParams(max_tokens=12, stop_token_ids=[stop]))
        assert events[-1].finish_reason == "stop"
        engine.extend(seq, [3, 4, 5])  # the next turn; the stop token's KV is there or pending
        more = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=6))]
        results.append(([e.token_id for e in events], more, seq.num_computed, len(seq.tokens)))
    assert results[0][:2] == results[1][:2]
    assert results[1][2] <= results[1][3]


def test_context_limit_is_never_overrun(model):
    limit = len(PROMPT) + 4
    step, piped = both(model, PROMPT, SamplingParams(max_tokens=50), max_context=limit)
    assert piped == step
    assert piped[1] == "context" and len(piped[2]) == limit


def test_a_prompt_that_fills_the_context_falls_back(model):
    engine = engine_for(model, True, max_context=len(PROMPT))
    events, seq = run(engine, PROMPT, SamplingParams(max_tokens=5))
    assert len(events) == 1 and events[0].finish_reason == "context"


def test_batch_rows_finishing_at_different_steps(model):
    prompts = [PROMPT, PROMPT[:4], [9, 8, 7, 6, 5, 4]]
    params = [SamplingParams(max_tokens=3), SamplingParams(max_tokens=11),
              SamplingParams(max_tokens=7)]  # fmt: skip
    results = []
    for pipeline in (False, True):
        engine = engine_for(model, pipeline)
        seqs = [engine.new_sequence() for _ in prompts]
        for s, p in zip(seqs, prompts):
            engine.extend(s, p)
        results.append([(r.tokens, r.finish_reason) for r in engine.generate_batch(seqs, params)])
    assert results[1] == results[0]


def test_generated_pages_are_sealed_and_reused(model, tmp_path):
    """Pages filled by pipelined steps are sealed as they fill; a new sequence over the same
    tokens reuses them and continues exactly."""
    layout = KVLayout(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, 2, torch.float32)
    kv = TieredKVCache(layout, 128, 64, b"p" * 32, disk_dir=tmp_path)
    engine = Engine(model, kv, TorchReferenceBackend(), max_context=CFG.max_position_embeddings,
                    config=EngineConfig(prefill_chunk=5, max_batch_tokens=16,
                                        pipeline_decode=True))  # fmt: skip
    events, seq = run(engine, PROMPT, SamplingParams(max_tokens=12))
    assert len(seq.hashes) == seq.num_computed // 2  # every full page is sealed
    again = engine.new_sequence()
    result = engine.extend(again, list(seq.tokens))
    assert result.cached_tokens == (len(seq.tokens) - 1) // 2 * 2
    want, _ = run(engine_for(model, False), list(seq.tokens), SamplingParams(max_tokens=5))
    got = [e.token_id for e in engine.generate(again, SamplingParams(max_tokens=5))]
    assert got == [e.token_id for e in want]


def test_closing_the_stream_early_leaves_a_consistent_sequence(model):
    engine = engine_for(model, True)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    stream = engine.generate(seq, SamplingParams(max_tokens=30))
    first = [next(stream).token_id for _ in range(4)]
    stream.close()
    assert seq.tokens[-4:] == first and seq.num_pending in (0, 1)
    rest = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=6))]
    reference = engine_for(model, False)
    want, _ = run(reference, PROMPT, SamplingParams(max_tokens=10))
    assert first + rest == [e.token_id for e in want]


class NoRepeat:
    """Forbids the token just produced (the mask depends on the last token); 9 tokens, then
    finished. Fails if asked for a mask before it has seen the previous token."""

    def __init__(self):
        self.seen: list[int] = []
        self.asked = 0

    def allowed(self, vocab_size):
        assert self.asked == len(self.seen), "mask asked for before the last token was seen"
        self.asked += 1
        mask = torch.ones(vocab_size, dtype=torch.bool)
        if self.seen:
            mask[self.seen[-1]] = False
        return mask

    def advance(self, token):
        self.seen.append(token)

    def finished(self):
        return len(self.seen) == 9


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_constrained_requests_pipeline_alike(model, temperature):
    results = []
    for pipeline in (False, True):
        params = SamplingParams(max_tokens=30, temperature=temperature, seed=5,
                                constraint=NoRepeat())  # fmt: skip
        events, _ = run(engine_for(model, pipeline), PROMPT, params)
        results.append(([e.token_id for e in events], events[-1].finish_reason))
    assert results[1] == results[0]
    tokens, reason = results[1]
    assert reason == "stop" and len(tokens) == 9
    assert all(a != b for a, b in zip(tokens, tokens[1:]))
