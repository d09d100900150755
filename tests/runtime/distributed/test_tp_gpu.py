"""Tensor parallel over NCCL on two GPUs (skipped with fewer): fp32 logits and greedy tokens of
the one-GPU run, with CUDA graphs (NCCL inside the captured decode), chunked and context-
parallel prefill (FlexAttention's log-sum-exp), and bf16 close to the one-GPU bf16 run."""

from __future__ import annotations

import pytest
import torch

from runtime.engine.sampling import SamplingParams
from runtime.local_model import LocalModel, RuntimeOptions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")]

CP_MIN = 300


def run(model: LocalModel, n: int) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    engine = model.engine
    seq = engine.new_sequence()
    engine.extend(seq, [(i * 37) % 8000 + 5 for i in range(n)])
    logits = seq.last_logits.cpu()
    tokens = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=16,
                                                                      ignore_eos=True))]
    engine.extend(seq, [11] * 40)
    return logits, tokens, seq.last_logits.cpu()


@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-4), ("bf16", 5e-2)])
def test_two_gpus_give_the_one_gpu_results(qwen2_folder, tmp_path, dtype, tol):
    options = dict(dtype=dtype, device="cuda", page_size=64, prefill_chunk=128, kv_pages=64,
                   host_pages=16, context_parallel=CP_MIN)
    one = LocalModel.open(str(qwen2_folder), RuntimeOptions(**options, cache_dir=tmp_path / "1"))
    want = [run(one, n) for n in (200, CP_MIN + 77)]  # chunked, then context parallel
    one.close()
    two = LocalModel.open(str(qwen2_folder), RuntimeOptions(**options, cache_dir=tmp_path / "2",
                                                            tensor_parallel=2))
    try:
        assert two.engine.runner.graphs is not None  # decode replays graphs with NCCL inside
        got = [run(two, n) for n in (200, CP_MIN + 77)]
        assert two.engine.runner.prefills == 1
    finally:
        two.close()
    for (a, toks, c), (ta, ttoks, tc) in zip(want, got):
        for x, y in ((ta, a), (tc, c)):
            assert (x - y).abs().max() <= tol * y.abs().max()
        if dtype == "fp32":
            assert ttoks == toks
