"""EngineHub on a tiny random Llama: forks of one sequence generating from their own threads
are decoded in shared steps, and give exactly what each would alone."""

from __future__ import annotations

import threading

import pytest
import torch

from agent.subagent_engine import EngineHub
from agent.subagent_pool import run_all
from runtime.engine.sampling import SamplingParams
from runtime.models import build_model
from tests.runtime.engine.test_engine import CFG, PROMPT, make_engine


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


TAILS = [[3, 4, 5], [60, 61], [7, 7, 7, 7, 7]]


def alone(model, tail, n=8):
    engine = make_engine(model)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    child = engine.fork(seq)
    engine.extend(child, tail)
    return [e.token_id for e in engine.generate(child, SamplingParams(max_tokens=n))]


def test_forks_generate_side_by_side_as_they_would_alone(model):
    engine = make_engine(model)
    parent = engine.new_sequence()
    engine.extend(parent, PROMPT)
    children = [engine.fork(parent) for _ in TAILS]
    for child in children:  # the fork holds the parent's tokens, KV shared or copied
        assert child.tokens == parent.tokens
    hub = EngineHub(engine)
    got: list[list[int] | None] = [None] * len(TAILS)

    def work(i: int) -> None:
        hub.extend(children[i], TAILS[i])
        got[i] = [e.token_id for e in hub.generate(children[i], SamplingParams(max_tokens=8))]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(TAILS))]
    for t in threads:
        t.start()
    hub.drive(lambda: not any(t.is_alive() for t in threads))
    assert got == [alone(model, tail) for tail in TAILS]
    assert hub.max_rows == len(TAILS)  # one step decoded all of them
    assert not engine.running


def test_a_generation_closed_early_is_aborted_and_errors_reach_the_caller(model):
    engine = make_engine(model)
    seq = engine.new_sequence()
    engine.extend(seq, PROMPT)
    hub = EngineHub(engine)
    out: dict[str, object] = {}

    def work() -> None:
        stream = hub.generate(seq, SamplingParams(max_tokens=50))
        out["first"] = next(stream).token_id
        stream.close()
        try:
            hub.truncate(seq, len(seq.tokens) + 5)
        except AssertionError as e:
            out["error"] = str(e)

    t = threading.Thread(target=work)
    t.start()
    hub.drive(lambda: not t.is_alive())
    assert "first" in out and "cannot truncate" in str(out["error"])
    assert not engine.running


def test_run_all_returns_results_in_order_and_reraises(model):
    class Conv:  # not a local conversation: plain threads
        pass

    barrier = threading.Barrier(2, timeout=5)

    def job(x):
        def run():
            barrier.wait()
            return x
        return run

    assert run_all(Conv(), [Conv(), Conv()], [job(1), job(2)], limit=2) == [1, 2]

    def boom():
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        run_all(Conv(), [Conv(), Conv()], [lambda: 1, boom], limit=2)
