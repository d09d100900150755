"""Tails: a new process restores a sequence's partial page and last logits and computes nothing
that the first process computed (on a GPU in bf16, recomputing them would change the output)."""

from __future__ import annotations

import torch

from runtime.engine.sampling import SamplingParams

from .test_engine import PROMPT, greedy, make_engine
from .test_prefix_reuse import FP, LONG, PAGE, tiered_engine


def first_process(model, disk, prompt=LONG, n=10):
    engine = tiered_engine(model, disk)
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    engine.save_tail(seq)
    tokens = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=n))]
    engine.kv.flush()
    return engine, seq, tokens


def tail_files(disk):
    return sorted(disk.rglob("*.tail"))


def test_a_new_process_restores_the_whole_prompt(model, tmp_path):
    reference = greedy(make_engine(model, page_size=PAGE), LONG, n=10)[0]
    _, _, first = first_process(model, tmp_path)
    assert len(LONG) % PAGE and tail_files(tmp_path), "the prompt's partial page was saved"
    engine = tiered_engine(model, tmp_path)
    seq = engine.new_sequence()
    result = engine.extend(seq, LONG)
    assert result.cached_tokens == len(LONG) and result.computed_tokens == 0
    assert result.cached_by_tier["disk"] == len(LONG)
    second = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))]
    assert first == second == reference


def test_restore_computes_nothing_and_the_next_turn_continues_exactly(model, tmp_path):
    engine, seq, _ = first_process(model, tmp_path)
    log = list(seq.tokens)
    turn = PROMPT[:7]
    engine.extend(seq, turn)
    want = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=8))]

    other = tiered_engine(model, tmp_path)
    resumed = other.new_sequence()
    result = other.restore(resumed, log)
    # Everything the first process had computed at the end of its generation came back.
    assert resumed.num_computed == len(log) - result.computed_tokens
    assert result.computed_tokens <= 1 and result.cached_tokens >= len(log) - 1
    other.extend(resumed, turn)
    got = [e.token_id for e in other.generate(resumed, SamplingParams(max_tokens=8))]
    assert got == want


def test_a_corrupt_tail_is_recomputed_with_the_same_output(model, tmp_path, caplog):
    _, _, first = first_process(model, tmp_path)
    for f in tail_files(tmp_path):
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    engine = tiered_engine(model, tmp_path)
    seq = engine.new_sequence()
    result = engine.extend(seq, LONG)
    assert result.computed_tokens == len(LONG) % PAGE
    assert "will be recomputed" in caplog.text
    assert [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))] == first


def test_tails_of_another_model_are_never_used(model, tmp_path):
    first_process(model, tmp_path)
    engine = tiered_engine(model, tmp_path, fingerprint=b"g" * 32)
    result = engine.extend(engine.new_sequence(), LONG)
    assert result.cached_tokens == 0 and result.computed_tokens == len(LONG)
    assert FP != b"g" * 32


def test_a_shorter_prompt_never_takes_a_longer_tail(model, tmp_path):
    first_process(model, tmp_path)
    engine = tiered_engine(model, tmp_path)
    short = LONG[:-1]
    seq = engine.new_sequence()
    result = engine.extend(seq, short)
    assert result.cached_tokens <= len(short)
    ref = make_engine(model, page_size=PAGE)
    rseq = ref.new_sequence()
    ref.extend(rseq, short)
    assert torch.allclose(seq.last_logits, rseq.last_logits, atol=1e-5)


def test_the_disk_gc_keeps_a_chain_head_and_drops_its_tail(model, tmp_path):
    """Pages are written head first, so plain LRU by write time would delete the head, after
    which no later page is reachable; page files carry their chain's last use less their depth."""
    engine, _, _ = first_process(model, tmp_path)
    disk = engine.kv.disk
    page_file = disk.page_bytes + 4096
    disk.gc(4 * page_file)
    other = tiered_engine(model, tmp_path)
    result = other.extend(other.new_sequence(), LONG)
    assert result.cached_by_tier.get("disk", 0) >= 4 * PAGE - PAGE, result


def test_a_restored_chain_is_newer_than_an_older_session(model, tmp_path):
    first_process(model, tmp_path)  # session A
    other_prompt = [t + 1 for t in LONG]
    first_process(model, tmp_path, prompt=other_prompt)  # session B, later
    # A is resumed: its pages become the most recently used chain, head newest.
    again = tiered_engine(model, tmp_path)
    again.extend(again.new_sequence(), LONG)
    disk = again.kv.disk
    disk.gc(8 * (disk.page_bytes + 4096))
    fresh = tiered_engine(model, tmp_path)
    kept = fresh.extend(fresh.new_sequence(), LONG).cached_by_tier.get("disk", 0)
    assert kept >= 8 * PAGE - PAGE


def test_a_page_aligned_prompt_restores_its_logits_in_a_new_process(model, tmp_path):
    aligned = LONG[: 8 * PAGE]  # no partial page: the tail holds only the last logits
    _, _, first = first_process(model, tmp_path, prompt=aligned)
    engine = tiered_engine(model, tmp_path)
    seq = engine.new_sequence()
    result = engine.extend(seq, aligned)
    assert result.cached_tokens == len(aligned) and result.computed_tokens == 0
    assert [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=10))] == first
