"""Block-scaled fp8 checkpoints (DeepSeek-V3 / V4 as they ship): dequantized at load.

A quantized linear stores `W.weight` in float8 (e4m3) and, beside it, one scale per
`block x block` tile (128 x 128 in DeepSeek's checkpoints): `W.weight_scale_inv` (V3, fp32)
or `W.scale` (V4, fp32 or e8m0). The value of element (i, j) is
`weight[i, j] * scale[i // block, j // block]`; edge tiles may be partial.

`BlockScaledNames` pairs each weight with its scale among a file's tensor names, so the loader
asks for weights only and gets them dequantized, and never sees the scales as tensors the model
does not use.
"""

from __future__ import annotations

import torch

from runtime.errors import CorruptModelFile

SCALE_SUFFIXES = ("_scale_inv", ".scale")  # after "W.weight" / after "W"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def dequantize_blocks(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
                      name: str = "weight") -> torch.Tensor:
    """fp32 `weight * scale` with one scale per `block` tile of the 2-D weight."""
    rows, cols = weight.shape
    b0, b1 = block
    expected = (-(-rows // b0), -(-cols // b1))
    if tuple(scale.shape) != expected:
        raise CorruptModelFile(f"{name} has block scales of shape {tuple(scale.shape)}, expected "
                               f"{expected} for {block} tiles; re-download the model")
    full = scale.float().repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
    return weight.float() * full


class BlockScaledNames:
    """Which tensor names of a file are block scales, and the scale of each weight."""

    def __init__(self, names: list[str]):
        present = set(names)
        self.scale_of: dict[str, str] = {}
        for name in names:
            if name.endswith(".weight_scale_inv"):
                weight = name.removesuffix("_scale_inv")
            elif name.endswith(".scale"):
                weight = name.removesuffix(".scale") + ".weight"
            else:
                continue
            if weight in present:
                self.scale_of[weight] = name
        self.scales = set(self.scale_of.values())

    def is_scale(self, name: str) -> bool:
        return name in self.scales

    def read(self, name: str, get, block: tuple[int, int]) -> torch.Tensor:
        """Tensor `name` via `get(name)`, dequantized when it is a block-scaled fp8 weight."""
        value = get(name)
        scale = self.scale_of.get(name)
        if scale is None or value.dtype not in FP8_DTYPES:
            if value.dtype in FP8_DTYPES:
                raise CorruptModelFile(f"{name} is fp8 without block scales; re-download it")
            return value
        return dequantize_blocks(value, get(scale), block, name)
