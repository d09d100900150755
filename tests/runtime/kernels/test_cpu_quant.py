"""Int4Linear: GGUF Q4_0/Q4_1 blocks packed for torch's CPU int4 kernel, against gguf's own
dequantization (the reference: the same weights, dequantized)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from runtime.kernels.cpu_quant import Int4Linear, can_pack


def _blocks(rows: int, cols: int, qtype: Q, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(raw GGUF bytes (rows, bytes per row), the fp32 weights they dequantize to)."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    data = gguf.quants.quantize(w, qtype)
    return data, torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(rows, cols))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_packed_weights_are_exactly_the_dequantized_ones(qtype):
    raw, ref = _blocks(128, 96, qtype)
    linear = Int4Linear.from_blocks(raw, qtype, torch.float32)
    assert linear.packed.dtype == torch.uint8 and linear.packed.numel() == 128 * 96 // 2
    # w = s(q - 8) + z with z = m + 8d rounds once more than gguf's d*q + m: an ulp of |z|.
    torch.testing.assert_close(linear.dequantized(), ref, rtol=0, atol=4e-7 * ref.abs().max())


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_fp32_products_match_the_dequantized_linear(qtype):
    raw, ref = _blocks(64, 256, qtype, seed=1)
    bias = torch.randn(64)
    linear = Int4Linear.from_blocks(raw, qtype, torch.float32, bias)
    x = torch.randn(2, 5, 256)
    want = x @ ref.T + bias
    got = linear(x)
    assert got.shape == (2, 5, 64)
    # fp32 summation order over K = 256 terms: a few ulps of the sum of |terms|.
    bound = 256 * 2**-23 * (x.abs() @ ref.abs().T).max()
    assert (got - want).abs().max() <= bound


def test_bf16_products_stay_within_bf16_rounding():
    raw, ref = _blocks(64, 256, Q.Q4_1, seed=2)
    linear = Int4Linear.from_blocks(raw, Q.Q4_1, torch.bfloat16)
    x = torch.randn(3, 256)
    got = linear(x.bfloat16()).float()
    want = x.bfloat16().float() @ ref.T
    # Scales, zeros and the output round to bf16 (8 bits): a few 2^-8 of the terms' scale.
    scale = (x.abs() @ ref.abs().T).max()
    assert (got - want).abs().max() <= 4 * 2**-8 * scale
    assert (got - want).abs().max() > 0  # the comparison can fail: bf16 is not exact


def test_cat_joins_outputs_and_refuses_unaligned_rows():
    parts = [Int4Linear.from_blocks(_blocks(n, 64, Q.Q4_1, seed=n)[0], Q.Q4_1, torch.float32)
             for n in (128, 64, 64)]
    fused = Int4Linear.cat(parts)
    x = torch.randn(4, 64)
    torch.testing.assert_close(fused(x), torch.cat([p(x) for p in parts], dim=-1))
    odd = Int4Linear.from_blocks(_blocks(48, 64, Q.Q4_0)[0], Q.Q4_0, torch.float32)
    assert Int4Linear.cat([parts[0], odd]) is None


def test_can_pack():
    assert can_pack(Q.Q4_1, (64, 576)) and can_pack(Q.Q4_0, (16, 32))
    assert not can_pack(Q.Q8_0, (64, 576))  # per-32 int8 scales: no torch kernel, dequantized
    assert not can_pack(Q.Q4_1, (40, 64))  # the CPU packing wants rows in sixteens
