"""GGUF 4-bit weights kept packed on the CPU and multiplied by torch's weight-only int4 kernel.

A Q4_0 or Q4_1 block holds 32 weights of one row as 4-bit codes q (0..15) with an fp16 scale d
(and for Q4_1 an fp16 minimum m): Q4_0 is `w = d * (q - 8)`, Q4_1 is `w = d * q + m`. torch's
`_weight_int4pack_mm_for_cpu` reads int4 codes packed by `_convert_weight_to_int4pack_for_cpu`
with, per group of 32 along the input, a scale s and a zero z: `w = s * (q - 8) + z`. So a
block maps exactly: s = d, and z = 0 (Q4_0) or z = m + 8d (Q4_1). With fp32 activations the
scales are exact (fp16 values), so a packed linear equals the dequantized fp32 one up to
summation order; with bf16 activations s and z round to bf16 as well (kernel's contract).

Per token a decode streams 0.5 byte per weight plus the scales (8 bytes per 32 weights in
fp32, 4 in bf16) instead of 4 (fp32) or 2 (bf16).

`GGUFEmbedding` serves a tied model's token lookups from the file's own bytes, so the table's
one dense copy is the head's (runtime/engine/cpu_layout.py packs it for the matmul).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from torch import Tensor, nn

GROUP = 32  # weights per GGUF block and per int4 kernel group
ROW_ALIGN = 64  # packed rows of several matrices concatenate when each has a multiple of this
PACKABLE = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1})
_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default


def can_pack(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> bool:
    """Whether a GGUF tensor of this type and (rows, cols) shape becomes an Int4Linear."""
    return qtype in PACKABLE and len(shape) == 2 and shape[0] % 16 == 0 and shape[1] % GROUP == 0


class Int4Linear(nn.Module):
    """A Linear over packed 4-bit weights: `x @ W.T + bias`, W never materialised."""

    def __init__(self, packed: Tensor, scales_zeros: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.out_features = scales_zeros.shape[1]
        self.in_features = scales_zeros.shape[0] * GROUP
        self.register_buffer("packed", packed)  # (N, K/2) uint8, the kernel's layout
        self.register_buffer("scales_zeros", scales_zeros)  # (K/32, N, 2) activations' dtype
        self.register_buffer("bias", bias)

    @classmethod
    def from_blocks(cls, blocks: np.ndarray, qtype: GGMLQuantizationType, dtype: torch.dtype,
                    bias: Tensor | None = None) -> Int4Linear:
        """From a GGUF tensor's raw bytes, shaped (rows, bytes per row)."""
        codes, scale, zero = _decode_blocks(blocks, qtype)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        return cls(packed, scales_zeros.to(dtype), None if bias is None else bias.to(dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.scales_zeros.dtype

    def forward(self, x: Tensor) -> Tensor:
        # Decode calls this ~120 times a token: the (T, K) case takes no reshape and the
        # overload is resolved once (each saves a few µs of dispatch, measured).
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        sz = self.scales_zeros
        if x2.dtype != sz.dtype:
            x2 = x2.to(sz.dtype)
        out = _INT4_MM(x2.contiguous(), self.packed, GROUP, sz)
        if self.bias is not None:
            out = out + self.bias
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self) -> Tensor:
        """W `(N, K)` in the activations' dtype (tests and the exactness reference)."""
        eye = torch.eye(self.in_features, dtype=self.dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, GROUP, self.scales_zeros
        ).T.contiguous()

    @staticmethod
    def cat(linears: list[Int4Linear]) -> Int4Linear | None:
        """One Int4Linear whose output is the concatenation of `linears`' outputs, or None when
        their packed rows cannot be joined (a row count not a multiple of ROW_ALIGN)."""
        if any(m.out_features % ROW_ALIGN for m in linears):
            return None
        biases = [m.bias for m in linears]
        bias = None if biases[0] is None else torch.cat(biases)
        return Int4Linear(
            torch.cat([m.packed for m in linears]),
            torch.cat([m.scales_zeros for m in linears], dim=1),
            bias,
        )


class GGUFEmbedding(nn.Module):
    """Token embeddings dequantized per lookup from a GGUF tensor's bytes (the file mapping).

    Rows come out of `gguf`'s dequantize like the dense table's did, then cast to `dtype`, so
    a lookup equals the dense embedding's exactly. The bytes stay in the page cache, shared
    with every process that maps the file; a step reads only the rows of its tokens."""

    def __init__(self, rows: np.ndarray, qtype: GGMLQuantizationType, dim: int,
                 dtype: torch.dtype):
        super().__init__()
        self.rows = rows  # (vocab, bytes per row) uint8, a view of the mapping
        self.qtype = qtype
        self.embedding_dim = dim
        self.dtype = dtype

    def forward(self, ids: Tensor) -> Tensor:
        picked = self.rows[ids.reshape(-1).numpy()]  # a copy of just these rows
        values = torch.from_numpy(dequantize(picked, self.qtype))
        return values.to(self.dtype).reshape(*ids.shape, self.embedding_dim)


def _decode_blocks(blocks: np.ndarray, qtype: GGMLQuantizationType
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(codes int32 (N, K) in 0..15, scale (N, K/32), zero (N, K/32)) fp32, `w = s(q-8) + z`."""
    rows = blocks.shape[0]
    size = 18 if qtype == GGMLQuantizationType.Q4_0 else 20
    b = np.ascontiguousarray(blocks).reshape(rows, -1, size)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if qtype == GGMLQuantizationType.Q4_0:
        zero = np.zeros_like(d)
        qs = b[..., 2:]
    else:
        m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = m + 8.0 * d
        qs = b[..., 4:]
    # Block element j < 16 is the low nibble of byte j, element 16 + j its high nibble.
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)
    return (torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(d),
            torch.from_numpy(zero))
