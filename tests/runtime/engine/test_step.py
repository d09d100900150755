"""Engine.step() over many requests: each request's tokens equal its run alone, decode goes
first, prefill is chunked under the budget and served round-robin, forks share pages, and
one request's failure or abort leaves the others running."""

from __future__ import annotations

import pytest

from runtime.engine.engine import Engine
from runtime.engine.sampling import SamplingParams
from tests.runtime.engine.test_engine import PROMPT, make_engine

PROMPTS = [PROMPT, PROMPT[:3], [1, 2, 3, 4, 5, 6, 7, 8, 9], list(range(20, 60))]


def solo(engine: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    tokens = [e.token_id for e in engine.generate(seq, params)]
    engine.release(seq)
    return tokens


def run_all(engine: Engine, reqs) -> dict[int, list[int]]:
    got = {r.req_id: [] for r in reqs}
    while engine.has_work:
        for r in engine.step():
            got[r.req_id] += [e.token_id for e in r.outbox]
            r.outbox.clear()
    return got


def recording(engine: Engine) -> list[list[tuple[int, int, int]]]:
    """Record each forward's work as (seq_id, start, end)."""
    steps: list[list[tuple[int, int, int]]] = []
    run = engine.runner.run

    def spy(work, ids=None):
        steps.append([(w.seq.seq_id, w.start, w.end) for w in work])
        return run(work, ids=ids)

    engine.runner.run = spy
    return steps


@pytest.mark.parametrize("pipelined", [False, True])
def test_requests_prefilled_in_steps_match_each_alone(model, pipelined):
    engine = make_engine(model)
    engine.config = type(engine.config)(prefill_chunk=5, max_batch_tokens=16,
                                        pipeline_decode=pipelined)
    params = [SamplingParams(max_tokens=10), SamplingParams(max_tokens=7),
              SamplingParams(max_tokens=10, temperature=0.8, seed=3),
              SamplingParams(max_tokens=4, top_k=5, temperature=1.0, seed=11)]
    want = [solo(engine, p, sp) for p, sp in zip(PROMPTS, params)]
    reqs = []
    for p, sp in zip(PROMPTS, params):
        seq = engine.new_sequence()
        seq.tokens.extend(p)  # pending: prefilled by the steps, not by extend
        reqs.append(engine.add_request(seq, sp))
    got = run_all(engine, reqs)
    assert [got[r.req_id] for r in reqs] == want
    assert all(r.finish_reason == "length" for r in reqs)


def test_decode_never_waits_behind_a_long_prefill(model):
    engine = make_engine(model, chunk=5)  # budget 16
    steps = recording(engine)
    short = engine.new_sequence()
    engine.extend(short, PROMPT)
    decoding = engine.add_request(short, SamplingParams(max_tokens=30))
    engine.step()  # the short one is decoding now
    long = engine.new_sequence()
    long.tokens.extend(range(1, 90))
    engine.add_request(long, SamplingParams(max_tokens=2))
    steps.clear()
    while long.num_pending:
        engine.step()
    assert len(steps) >= 89 // 16
    for work in steps:
        rows = [w for w in work if w[0] == short.seq_id]
        assert rows and rows[0][2] - rows[0][1] == 1, "the decoding sequence got its token"
        prefill = sum(e - s for sid, s, e in work if sid == long.seq_id)
        assert 0 < prefill <= 16 - 1, "prefill fills what the budget leaves, in chunks"
        chunks = [e - s for sid, s, e in work if sid == long.seq_id]
        assert all(c <= 5 for c in chunks)
    engine.abort(decoding)


def test_prefills_are_served_round_robin(model):
    engine = make_engine(model, chunk=8)
    engine.scheduler.max_batch_tokens = 8  # one chunk a step
    steps = recording(engine)
    seqs = [engine.new_sequence() for _ in range(3)]
    for i, s in enumerate(seqs):
        s.tokens.extend(range(1 + i, 41 + i))
        engine.add_request(s, SamplingParams(max_tokens=1))
    for _ in range(6):
        engine.step()
    served = [work[0][0] for work in steps[:6]]
    assert sorted(served[:3]) == sorted(s.seq_id for s in seqs)
    assert served[3:] == served[:3], "each prefilling sequence is served every 3 steps"


def test_chunk_boundaries_do_not_depend_on_other_requests(model):
    engine = make_engine(model, chunk=5)
    steps = recording(engine)
    a, b = engine.new_sequence(), engine.new_sequence()
    a.tokens.extend(range(1, 24))
    b.tokens.extend(range(30, 44))
    engine.add_request(a, SamplingParams(max_tokens=1))
    engine.add_request(b, SamplingParams(max_tokens=1))
    while engine.has_work:
        engine.step()
    for seq in (a, b):
        starts = [s for work in steps for sid, s, e in work if sid == seq.seq_id and e - s > 1]
        assert all(s % 5 == 0 for s in starts), starts


def test_forks_share_pages_and_continue_like_the_parent(model):
    engine = make_engine(model, num_pages=64)
    params = SamplingParams(max_tokens=8)
    want = solo(engine, PROMPT * 2, params)
    parent = engine.new_sequence()
    engine.extend(parent, PROMPT * 2)
    free = engine.kv.pool.num_free
    children = [engine.fork(parent) for _ in range(3)]
    assert free - engine.kv.pool.num_free == 3, "only the partial page is copied"
    reqs = [engine.add_request(c, params) for c in children]
    got = run_all(engine, reqs)
    assert all(got[r.req_id] == want for r in reqs)


def test_out_of_pages_ends_one_request_and_spares_the_others(model):
    engine = make_engine(model, page_size=4, num_pages=12)
    small = engine.new_sequence()
    engine.extend(small, PROMPT[:3])
    ok = engine.add_request(small, SamplingParams(max_tokens=4))
    big = engine.new_sequence()
    big.tokens.extend(range(1, 60))
    doomed = engine.add_request(big, SamplingParams(max_tokens=4))
    run_all(engine, [ok, doomed])
    assert doomed.finish_reason == "error" and "KV pages" in str(doomed.error)
    assert ok.finish_reason == "length" and len(ok.generated) == 4


def test_abort_mid_prefill_leaves_the_sequence_consistent(model):
    engine = make_engine(model, chunk=5)
    seq = engine.new_sequence()
    seq.tokens.extend(range(1, 30))
    req = engine.add_request(seq, SamplingParams(max_tokens=3))
    engine.step()
    engine.step()
    engine.abort(req)
    assert not engine.has_work and req.finish_reason == "aborted"
    assert seq.num_computed == 10 and seq.num_pending == 19
    params = SamplingParams(max_tokens=5)
    assert [e.token_id for e in engine.generate(seq, params)] == solo(
        engine, list(range(1, 30)), params)


@pytest.mark.gpu
def test_staggered_requests_on_cuda_pipelined_with_graphs():
    """On the GPU: requests arriving while others decode (mixed prefill + decode steps run
    eagerly, pure decode steps replay graphs) each equal their run alone. fp32, so that the
    batch's matmul shapes cannot flip a greedy token (bf16 would, see test_cuda_graphs)."""
    import torch

    from tests.runtime.engine.test_cuda_graphs import GPU_CFG, long_prompts, random_model
    from tests.runtime.engine.test_cuda_graphs import make_engine as cuda_engine

    model = random_model(GPU_CFG, "cuda", torch.float32)
    engine = cuda_engine(model, GPU_CFG, "cuda", torch.float32, 16, graphs=True, splits=4,
                         buckets=(1, 2, 4), pipeline=True)
    prompts = long_prompts(4)
    params = SamplingParams(max_tokens=24)
    want = [solo(engine, p, params) for p in prompts]
    replays = engine.runner.graphs.replays
    reqs, got = [], {}
    for p in prompts:  # one more request every 5 steps
        seq = engine.new_sequence()
        seq.tokens.extend(p)
        reqs.append(engine.add_request(seq, params))
        got[reqs[-1].req_id] = []
        for _ in range(5):
            for r in engine.step():
                got[r.req_id] += [e.token_id for e in r.outbox]
                r.outbox.clear()
    rest = run_all(engine, reqs)
    for req_id in got:
        got[req_id] += rest[req_id]
    assert [got[r.req_id] for r in reqs] == want
    assert engine.runner.graphs.replays > replays
