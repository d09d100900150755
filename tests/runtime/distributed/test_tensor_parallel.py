"""Tensor parallel on the CPU (gloo): 2 and 4 rank processes give the one-process logits
(fp32, within 1e-4 of their scale) and the same greedy tokens, through uneven chunked
prefill, forks, a restore from each rank's own disk files and a context-parallel prefill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runtime.engine.sampling import SamplingParams
from runtime.local_model import LocalModel, RuntimeOptions

PAGE, CHUNK, CP_MIN = 16, 24, 96
OPTIONS = dict(dtype="fp32", device="cpu", page_size=PAGE, prefill_chunk=CHUNK, kv_pages=96,
               host_pages=96, warmup=False, context_parallel=CP_MIN)


def close_enough(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-4 * scale, (got - want).abs().max() / scale


@pytest.fixture(scope="module", params=[2, 4], ids=["tp2", "tp4"])
def pair(request, qwen2_folder, tmp_path_factory):
    """(one-process model, tensor-parallel model) on the same folder, own cache dirs."""
    world = request.param
    base = tmp_path_factory.mktemp(f"tp{world}")
    ref = LocalModel.open(str(qwen2_folder), RuntimeOptions(**OPTIONS, cache_dir=base / "one"))
    tp = LocalModel.open(str(qwen2_folder), RuntimeOptions(
        **OPTIONS, cache_dir=base / "tp", tensor_parallel=world))
    yield ref, tp, world
    tp.close()
    ref.close()


def both(pair, fn):
    ref, tp, _ = pair
    return fn(ref.engine), fn(tp.engine)


def prompt(n: int, salt: int = 0) -> list[int]:
    return [(i * 37 + salt * 101) % 8000 + 5 for i in range(n)]


def test_uneven_chunked_prefill_gives_the_one_process_logits(pair):
    def run(engine):
        seq = engine.new_sequence()
        out = []
        for piece in (prompt(7, 1), prompt(33, 2)[7:], prompt(50, 3)[:19]):  # 7, 26, 19
            engine.extend(seq, piece)
            out.append(seq.last_logits)
        return out

    for got, want in zip(*reversed(both(pair, run))):
        close_enough(got, want)


def test_greedy_and_seeded_tokens_are_identical(pair):
    def run(engine):
        seq = engine.new_sequence()
        engine.extend(seq, prompt(41, 4))
        greedy = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=12,
                                                                          ignore_eos=True))]
        seeded = engine.generate(seq, SamplingParams(temperature=0.8, seed=7, max_tokens=6,
                                                     ignore_eos=True))
        return greedy, [e.token_id for e in seeded]

    want, got = both(pair, run)
    assert got == want


def test_forks_share_their_prefix_and_diverge_alike(pair):
    def run(engine):
        seq = engine.new_sequence()
        engine.extend(seq, prompt(37, 5))  # a partial page: copied on fork
        child = engine.fork(seq)
        engine.extend(seq, prompt(9, 6))
        engine.extend(child, prompt(20, 7))
        logits = child.last_logits
        tokens = [e.token_id for e in engine.generate(child, SamplingParams(
            max_tokens=5, ignore_eos=True))]
        return seq.last_logits, logits, tokens

    (a, b, toks), (ta, tb, ttoks) = both(pair, run)
    close_enough(ta, a)
    close_enough(tb, b)
    assert ttoks == toks


def test_restore_from_each_ranks_disk_files(pair, tmp_path):
    ref, tp, world = pair
    ids = prompt(70, 8)

    def run(engine, model):
        seq = engine.new_sequence()
        engine.extend(seq, ids[:60])
        engine.release(seq)
        model.flush()
        engine.kv.evict_all_to_disk()
        again = engine.new_sequence()
        result = engine.extend(again, ids)
        return result.cached_by_tier, again.last_logits

    (want_tiers, want), (got_tiers, got) = run(ref.engine, ref), run(tp.engine, tp)
    assert got_tiers == want_tiers and got_tiers.get("disk", 0) >= 3 * PAGE
    close_enough(got, want)
    fingerprints = list((Path(tp.cache_dir) / "kv").iterdir())
    assert len(fingerprints) == world  # one directory of page files per rank


def test_long_fresh_prefill_runs_context_parallel_then_decodes(pair):
    ref, tp, _ = pair
    before = tp.engine.runner.prefills

    def run(engine):
        seq = engine.new_sequence()
        engine.extend(seq, prompt(CP_MIN + 13, 9))
        logits = seq.last_logits
        tokens = [e.token_id for e in engine.generate(seq, SamplingParams(
            max_tokens=8, ignore_eos=True))]
        engine.extend(seq, prompt(30, 10))  # then chunked prefill on the TP layout
        return logits, tokens, seq.last_logits

    (a, toks, c), (ta, ttoks, tc) = both(pair, run)
    assert tp.engine.runner.prefills == before + 1
    close_enough(ta, a)
    assert ttoks == toks
    close_enough(tc, c)


def test_a_page_file_lost_on_one_rank_is_recomputed_on_every_rank(pair):
    ref, tp, world = pair
    ids = prompt(60, 11)
    seq = tp.engine.new_sequence()
    tp.engine.extend(seq, ids)
    tp.engine.release(seq)
    tp.flush()
    tp.engine.kv.evict_all_to_disk()
    others = [d for d in (Path(tp.cache_dir) / "kv").iterdir() if d.name != tp.fingerprint[:16]]
    for page in others[-1].rglob("*.page"):  # one follower's files only
        page.unlink()
    again = tp.engine.new_sequence()
    result = tp.engine.extend(again, ids)
    assert result.cached_tokens == 0 and result.computed_tokens == len(ids)
    want = ref.engine.new_sequence()
    ref.engine.extend(want, ids)
    close_enough(again.last_logits, want.last_logits)
