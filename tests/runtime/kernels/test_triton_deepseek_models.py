"""The DeepSeek models through their Triton paths (latent attention, indexer scores, sparse
attention) against transformers: the same exactness as the torch paths, in the interpreter on
the CPU (compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_ref import TorchReferenceBackend
from runtime.loader import load_model
from tests.runtime.helpers import PagedRunner, assert_close_logits, hf_greedy, hf_logits, prompt_ids
from tests.runtime.kernels.on_device import DEVICE, fp32_tol

transformers = pytest.importorskip("transformers")


class TritonNamed(TorchReferenceBackend):
    """Dense layers keep the torch reference; the DeepSeek layers see "triton" and take the
    Triton kernels (they attend through their own ops, not this backend's)."""

    name = "triton"


def runner(loaded):
    r = PagedRunner(loaded.model, loaded.config, page_size=16, device=DEVICE)
    r.backend = TritonNamed()
    return r


@pytest.fixture(scope="module", params=["deepseek_v4", "deepseek_v3"])
def pair(request, tmp_path_factory):
    from tests.runtime.test_deepseek_v4 import CASES as V4
    from tests.runtime.test_deepseek_v4 import tiny_v4
    from tests.runtime.test_mla_models import CASES as MLA
    from tests.runtime.test_mla_models import tiny_mla

    hf = tiny_v4(V4[0][1]) if request.param == "deepseek_v4" else tiny_mla(MLA[0][1], MLA[0][2])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, load_model(path, dtype=torch.float32, device=DEVICE)


@pytest.mark.slow
def test_chunked_prefill_and_greedy_match_transformers(pair):
    hf, loaded = pair
    ids = prompt_ids(256, 36, seed=3)  # past two windows of 8, nine CSA entries, four HCA
    tol = fp32_tol(1e-4, 5e-3)  # tf32 dots in the Triton layers, fp32 in the dense ones
    assert_close_logits(runner(loaded).prefill(ids, [5, 14]), hf_logits(hf, ids), tol)
    assert runner(loaded).greedy(ids, 6, [20]) == hf_greedy(hf, ids, 6)
