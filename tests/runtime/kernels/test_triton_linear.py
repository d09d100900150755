"""The batch-1 GEMV (with bias, with the SiLU * up prologue) and silu_mul against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runtime.kernels.triton_linear import GemvConfig, gemv, silu_mul

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up  # the model's own code: each op rounds to the input dtype


@pytest.mark.parametrize("n,k", [(1, 32), (7, 64), (45, 96), (130, 200)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(n, k, bias):
    torch.manual_seed(n * k)
    x = torch.randn(1, k, device=DEVICE)
    w = torch.randn(n, k, device=DEVICE)
    b = torch.randn(n, device=DEVICE) if bias else None
    torch.testing.assert_close(gemv(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-4)


def test_gemv_reads_strided_weight_rows():
    # A weight whose rows are a slice of wider rows (row stride > K), as views can be.
    wide = torch.randn(9, 80, device=DEVICE)
    w = wide[:, :48]
    x = torch.randn(1, 48, device=DEVICE)
    torch.testing.assert_close(gemv(x, w), F.linear(x, w), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k", [32, 50])
def test_gemv_silu_mul_prologue(k):
    torch.manual_seed(k)
    gate_up = torch.randn(1, 2 * k, device=DEVICE)
    w = torch.randn(11, k, device=DEVICE)
    want = F.linear(reference_silu_mul(gate_up), w)
    torch.testing.assert_close(gemv(gate_up, w, act="silu_mul"), want, atol=1e-4, rtol=1e-4)


def test_gemv_rejects_what_it_cannot_do():
    w = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(AssertionError, match="one contiguous row"):
        gemv(torch.randn(2, 8, device=DEVICE), w)
    with pytest.raises(AssertionError, match="columns"):
        gemv(torch.randn(1, 9, device=DEVICE), w)
    with pytest.raises(AssertionError, match="activation"):
        gemv(torch.randn(1, 16, device=DEVICE), w, act="gelu")


@pytest.mark.parametrize("t,f", [(1, 40), (3, 64), (5, 100)])
def test_silu_mul_matches(t, f):
    torch.manual_seed(t + f)
    gate_up = torch.randn(t, 2 * f, device=DEVICE)
    torch.testing.assert_close(silu_mul(gate_up), reference_silu_mul(gate_up),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)])
def test_gemv_bf16_real_shapes(n, k):
    torch.manual_seed(0)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    want = F.linear(x.float(), w.float(), b.float())
    torch.testing.assert_close(gemv(x, w, b).float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_bf16_silu_mul_rounds_like_the_model():
    gate_up = torch.randn(3, 2 * 18944, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(silu_mul(gate_up), reference_silu_mul(gate_up))
    w = torch.randn(64, 18944, device="cuda", dtype=torch.bfloat16) / 18944**0.5
    row = gate_up[:1].contiguous()
    want = F.linear(reference_silu_mul(row).float(), w.float())
    torch.testing.assert_close(gemv(row, w, act="silu_mul", config=GemvConfig()).float(), want,
                               atol=2e-2, rtol=2e-2)
