"""Kernel test fixtures: the Triton interpreter off the GPU, and paged KV pools to test against.

TRITON_INTERPRET must be set before any `@triton.jit` kernel is defined (triton decides at
decoration time), so it is set here, at import, before the test modules import the kernels.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from runtime.engine.metadata import build_metadata  # noqa: E402
from runtime.kernels.backend import AttentionMetadata  # noqa: E402


class Paged:
    """A page pool `[pages, layers, 2, page_size, Hkv, D]` and one layer's strided K/V views.

    Every slot a sequence does not own holds NaN, so a kernel that reads past a sequence's end
    (or a padded block-table entry) without masking produces NaN and fails the comparison.
    """

    def __init__(
        self,
        seq_lens: list[int],
        query_lens: list[int],
        kv_heads: int,
        head_dim: int,
        page_size: int,
        dtype: torch.dtype,
        device: str,
        layers: int = 2,
    ):
        pages = [-(-s // page_size) for s in seq_lens]
        num_pages = sum(pages) + 2
        self.pool = torch.full(
            (num_pages, layers, 2, page_size, kv_heads, head_dim),
            float("nan"),
            dtype=dtype,
            device=device,
        )
        layer = layers - 1  # not the first layer, so stride(0) differs from a lone layer's
        self.k_cache, self.v_cache = self.pool[:, layer, 0], self.pool[:, layer, 1]
        perm = torch.randperm(num_pages).tolist()
        self.tables: list[list[int]] = []
        for n in pages:
            self.tables.append(perm[:n])
            perm = perm[n:]
        for table, kv_len in zip(self.tables, seq_lens):
            for i, page in enumerate(table):
                used = min(page_size, kv_len - i * page_size)
                for cache in (self.k_cache, self.v_cache):
                    cache[page, :used] = torch.randn(
                        used, kv_heads, head_dim, dtype=dtype, device=device
                    )
        # Pad every table by two entries pointing at NaN pages, as a batch of mixed widths does.
        self.meta: AttentionMetadata = build_metadata(
            [t + perm[:2] for t in self.tables],
            seq_lens,
            query_lens,
            page_size,
            torch.device(device),
        )


@pytest.fixture
def paged():
    """Factory: `paged(seq_lens, query_lens, kv_heads, head_dim, page_size, dtype, device)`."""
    torch.manual_seed(0)
    return Paged


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64; NaN anywhere gives inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture
def rel():
    return rel_err
