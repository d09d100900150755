"""MXFP4 (OCP microscaling FP4) weights, as gpt-oss checkpoints store their experts.

Each row of K values is G = K / 32 blocks of 16 bytes: 32 e2m1 nibbles (low nibble first) and
one e8m0 scale byte per block (a power of two, bias 127). They are dequantized here, once, at
load: the GPU path has no MXFP4 GEMM yet, and on CPU torch has no fp4 arithmetic; a 20b model
then holds bf16 experts (about 2.3x the MXFP4 bytes).
"""

from __future__ import annotations

import torch

# e2m1 code -> value: sign bit, 2 exponent bits, 1 mantissa bit.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)  # fmt: skip
SCALE_BIAS = 127


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 `(..., G * 32)` from blocks `(..., G, 16)` uint8 and scales `(..., G)` uint8."""
    assert blocks.dtype == torch.uint8 and scales.dtype == torch.uint8, "MXFP4 tensors are uint8"
    assert blocks.shape[:-1] == scales.shape and blocks.shape[-1] == 16, (
        f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}"
    )
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    low, high = lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]
    values = torch.stack([low, high], dim=-1).flatten(-2)  # (..., G, 32)
    exponents = scales.to(torch.int32) - SCALE_BIAS
    return torch.ldexp(values, exponents.unsqueeze(-1)).flatten(-2)  # (..., G * 32)
