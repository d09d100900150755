"""Start-up compiles every kernel variant a session meets: after `LocalModel.open`, a first
turn with a partial last chunk, a next turn over it (split keys), a short message and decode
compile nothing more (on the H200 a first turn's last chunk once waited 3.9 s for Triton)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

from tests.model_folder import TINY, write_model_folder

pytestmark = [pytest.mark.gpu]


def _variants() -> dict[str, int]:
    from runtime.kernels import triton_decode, triton_extend, triton_norm, triton_store

    kernels = {"extend": triton_extend._extend_kernel, "merge": triton_decode._merge_kernel,
               "store": triton_store._store_kv_kernel, "rope": triton_norm._rope_kernel}
    return {name: sum(len(entry[0]) for entry in k.device_caches.values())
            for name, k in kernels.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_turn_compiles_a_kernel_after_start_up(tmp_path, monkeypatch):
    from runtime.engine.sampling import SamplingParams
    from runtime.local_model import LocalModel, RuntimeOptions

    monkeypatch.setenv("AGENT_CACHE_DIR", str(tmp_path / "cache"))
    base = os.environ.get("AGENT_TEST_MODEL_DIR")
    folder = write_model_folder(Path(base or tmp_path) / "tiny", TINY)
    gc.collect()  # earlier tests of this process may still hold cached device blocks
    torch.cuda.empty_cache()
    model = LocalModel.open(str(folder), RuntimeOptions(gpu_memory=0.5))
    engine = model.engine
    before = _variants()
    seq = engine.new_sequence()
    gen = torch.Generator().manual_seed(0)
    for n in (20011, 3313, 37, 1000):  # partial chunks, short and long queries over a prefix
        engine.extend(seq, torch.randint(10, 9000, (n,), generator=gen).tolist())
        assert _variants() == before, f"extending {n} tokens compiled a kernel variant"
    list(engine.generate(seq, SamplingParams(max_tokens=4)))
    assert _variants() == before
    model.close()
