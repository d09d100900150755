"""Fused residual-add + RMSNorm and RoPE against the model's torch code."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.triton_norm import add_rmsnorm, rope_
from runtime.rope import apply_rotary

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_norm(x, weight, eps, residual=None):
    if residual is not None:
        x = residual + x
    res = x
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype), res


@pytest.mark.parametrize("t,n", [(1, 64), (5, 96), (3, 576)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm_matches(t, n, with_residual):
    torch.manual_seed(t * n)
    x = torch.randn(t, n, device=DEVICE)
    w = torch.randn(n, device=DEVICE)
    res = torch.randn(t, n, device=DEVICE) if with_residual else None
    out, new_res = add_rmsnorm(x, w, 1e-6, res)
    ref_out, ref_res = reference_norm(x, w, 1e-6, res)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_res, ref_res)


@pytest.mark.parametrize("t,h,d", [(1, 3, 64), (4, 2, 16), (7, 5, 80), (37, 2, 32)])
def test_rope_in_place_matches(t, h, d):
    torch.manual_seed(t + h + d)
    qkv = torch.randn(t, (h + 2) * d, device=DEVICE)
    x = qkv[:, : h * d].reshape(t, h, d)  # a strided view, as the model has it
    cos, sin = torch.randn(t, d // 2, device=DEVICE), torch.randn(t, d // 2, device=DEVICE)
    expected = apply_rotary(x.clone(), cos, sin)
    rope_(x, cos, sin)
    torch.testing.assert_close(qkv[:, : h * d].reshape(t, h, d), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_bf16_norm_and_rope_on_the_gpu():
    x = torch.randn(33, 3584, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3584, device="cuda", dtype=torch.bfloat16)
    r = torch.randn(33, 3584, device="cuda", dtype=torch.bfloat16)
    out, res = add_rmsnorm(x, w, 1e-6, r)
    ref_out, ref_res = reference_norm(x, w, 1e-6, r)
    torch.testing.assert_close(res, ref_res)
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=2e-2)
    q = torch.randn(33, 28, 128, device="cuda", dtype=torch.bfloat16)
    angles = torch.rand(33, 64, device="cuda") * 1000  # rotations, as the model's tables hold
    cos, sin = angles.cos(), angles.sin()
    expected = apply_rotary(q.clone(), cos, sin)
    torch.testing.assert_close(rope_(q, cos, sin), expected, atol=3e-2, rtol=3e-2)
