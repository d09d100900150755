"""Blockwise attention with log-sum-exp, merged, equals attention over all the keys; the
FlexAttention path (CUDA's) agrees with the reference (run eagerly on the CPU here)."""

from __future__ import annotations

import pytest
import torch

from runtime.distributed.context_parallel import _span_attention
from runtime.distributed.lse_attention import _reference, attention_lse


def full_causal(q, k, v, scale):
    group = q.shape[1] // k.shape[1]
    kf, vf = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("nhd,mhd->hnm", q, kf) * scale
    n = q.shape[0]
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("hnm,mhd->nhd", scores.softmax(-1), vf)


@pytest.mark.parametrize("total, start, end, hq, hkv", [(40, 0, 13, 4, 2), (40, 13, 31, 4, 2),
                                                         (1100, 1030, 1100, 2, 1)])
def test_a_span_over_its_prefix_and_itself_is_causal_attention(total, start, end, hq, hkv):
    torch.manual_seed(0)
    q, k, v = torch.randn(total, hq, 8), torch.randn(total, hkv, 8), torch.randn(total, hkv, 8)
    want = full_causal(q, k, v, 0.3)[start:end]
    got = _span_attention(q[start:end], k, v, start, end, 0.3)
    assert torch.allclose(got, want, atol=1e-5)


def test_reference_lse_is_the_log_of_the_softmax_denominator():
    torch.manual_seed(1)
    q, k, v = torch.randn(5, 2, 4), torch.randn(7, 1, 4), torch.randn(7, 1, 4)
    _, lse = attention_lse(q, k, v, 0.5, causal=False)
    scores = torch.einsum("nhd,mhd->nhm", q, k.expand(7, 2, 4)) * 0.5
    assert torch.allclose(lse, scores.logsumexp(-1), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("n, m", [(300, 300), (257, 1000)])
def test_flex_path_matches_the_reference(n, m):
    torch.manual_seed(2)
    q = torch.randn(n, 8, 64, device="cuda")
    k, v = torch.randn(m, 2, 64, device="cuda"), torch.randn(m, 2, 64, device="cuda")
    for causal in (True, False) if n == m else (False,):
        out, lse = attention_lse(q, k, v, 0.125, causal)  # FlexAttention on CUDA
        want_out, want_lse = _reference(q.cpu(), k.cpu(), v.cpu(), 0.125, causal)
        assert torch.allclose(out.cpu(), want_out, atol=2e-3)
        assert torch.allclose(lse.cpu(), want_lse, atol=2e-3)
