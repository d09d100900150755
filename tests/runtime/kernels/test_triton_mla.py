"""The Triton latent-attention kernel against the torch MLA reference over paged latent rows
(interpreter on the CPU; the same tests on a GPU run the compiled kernel, in bf16 too)."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_mla import TorchLatentBackend
from runtime.kernels.triton_mla import TritonLatentBackend
from tests.runtime.kernels.on_device import DEVICE, fp32_tol

CASES = [
    ([1, 16, 37], [1, 1, 1], 4, 32, 8, 16),  # decode: one key, an exact page, a ragged tail
    ([23, 40], [23, 7], 5, 32, 8, 16),  # extend: a whole prompt, and 7 new on 33 cached
    ([70], [1], 20, 64, 16, 32),  # more heads than one block, wider rope
]


def inputs(paged, seq_lens, query_lens, heads, rank, rope, page, dtype):
    p = paged(seq_lens, query_lens, 1, rank + rope, page, dtype, DEVICE)
    t = sum(query_lens)
    g = torch.Generator(device="cpu").manual_seed(1)
    q_nope = torch.randn(t, heads, 16, generator=g).to(DEVICE, dtype)
    q_rope = torch.randn(t, heads, rope, generator=g).to(DEVICE, dtype)
    w_kv = (torch.randn(heads, 16 + 12, rank, generator=g) * 0.3).to(DEVICE, dtype)
    return p, q_nope, q_rope, w_kv


@pytest.mark.parametrize("seq_lens,query_lens,heads,rank,rope,page", CASES)
def test_kernel_matches_reference(paged, rel, seq_lens, query_lens, heads, rank, rope, page):
    p, q_nope, q_rope, w_kv = inputs(paged, seq_lens, query_lens, heads, rank, rope, page,
                                     torch.float32)
    ref = TorchLatentBackend()
    form = ref.decode if p.meta.is_decode else ref.extend
    want = form(q_nope.double(), q_rope.double(), p.k_cache.double(), w_kv.double(), p.meta, 0.2)
    got = TritonLatentBackend().decode(q_nope, q_rope, p.k_cache, w_kv, p.meta, 0.2)
    assert got.shape == want.shape
    tol = 1e-5 if DEVICE == "cpu" else 2e-3  # the GPU's fp32 dot is tf32
    assert rel(got, want) < tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_in_bf16_on_the_gpu(paged, rel):
    p, q_nope, q_rope, w_kv = inputs(paged, [300, 1000], [1, 1], 16, 512, 64, 64,
                                     torch.bfloat16)
    want = TorchLatentBackend().decode(q_nope.double(), q_rope.double(), p.k_cache.double(),
                                       w_kv.double(), p.meta, 0.05)
    got = TritonLatentBackend().decode(q_nope, q_rope, p.k_cache, w_kv, p.meta, 0.05)
    assert rel(got, want) < 2e-2


@pytest.mark.parametrize("splits", [2, 5, 16])
def test_split_keys_merge_to_the_unsplit_result(paged, rel, splits):
    """Flash-decoding splits (some empty for the shorter sequences) merge to the same output."""
    from runtime.kernels.triton_mla import latent_attention, query_tokens

    p, q_nope, q_rope, w_kv = inputs(paged, [3, 70, 129], [1, 1, 1], 4, 32, 8, 16,
                                     torch.float32)
    q_lat = torch.einsum("thd,hdr->thr", q_nope, w_kv[:, :16]).contiguous()
    seq, pos = query_tokens(p.meta)
    args = (q_lat, q_rope, p.k_cache, p.meta.block_tables, seq, pos, 0.2)
    one = latent_attention(*args, max_keys=129, splits=1)
    many = latent_attention(*args, max_keys=129, splits=splits)
    assert rel(many, one) < fp32_tol(1e-6, 1e-4)  # tf32: splits round differently
