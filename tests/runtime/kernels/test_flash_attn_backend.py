"""FlashAttnBackend's glue, against a stand-in flash_attn module (flash-attn needs CUDA)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from runtime.kernels.torch_ref import attend_reference, gather_kv
from tests.runtime.kernels.on_device import DEVICE, fp32_tol


def fake_flash_attn(calls: list[str]) -> types.ModuleType:
    """flash_attn's two paged entry points, computed with the reference from their arguments."""

    def with_kvcache(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, causal):
        assert q.dim() == 4 and q.shape[1] == 1 and causal
        calls.append("kvcache")
        outs = [
            attend_reference(
                q[b],
                gather_kv(k_cache, block_table[b], int(n)),
                gather_kv(v_cache, block_table[b], int(n)),
                softmax_scale,
            )
            for b, n in enumerate(cache_seqlens.tolist())
        ]
        return torch.stack(outs)

    def varlen(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        softmax_scale,
        causal,
        block_table,
    ):
        assert cu_seqlens_k.dtype == torch.int32 and causal
        calls.append("varlen")
        out = torch.empty_like(q)
        qs, ks = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for b in range(len(qs) - 1):
            n = ks[b + 1] - ks[b]
            assert n <= max_seqlen_k and qs[b + 1] - qs[b] <= max_seqlen_q
            out[qs[b] : qs[b + 1]] = attend_reference(
                q[qs[b] : qs[b + 1]],
                gather_kv(k, block_table[b], n),
                gather_kv(v, block_table[b], n),
                softmax_scale,
            )
        return out

    mod = types.ModuleType("flash_attn")
    mod.flash_attn_with_kvcache = with_kvcache
    mod.flash_attn_varlen_func = varlen
    return mod


@pytest.mark.parametrize("page_size", [256, 16])
@pytest.mark.parametrize("query_lens", [[5, 1, 70], [1, 1, 1]], ids=["extend", "decode"])
def test_flash_backend_wiring(monkeypatch, paged, rel, page_size, query_lens):
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash_attn(calls))
    from runtime.kernels.backend import create_backend
    from runtime.kernels.torch_ref import TorchReferenceBackend

    backend = create_backend("flash_attn")
    p = paged([40, 260, 300], query_lens, 2, 64, page_size, torch.float16, DEVICE)
    q = torch.randn(sum(query_lens), 8, 64, dtype=torch.float16, device=DEVICE)
    if page_size == 16:
        # flash-attn cannot take 16-token pages: the Triton kernels answer (fp32 in the
        # interpreter), and flash_attn is never called.
        q, p.pool = q.float(), p.pool.float()
        p.k_cache, p.v_cache = p.pool[:, 1, 0], p.pool[:, 1, 1]
    out = backend.forward(q, p.k_cache, p.v_cache, p.meta, 0.125)
    want = TorchReferenceBackend().forward(
        q.double(), p.k_cache.double(), p.v_cache.double(), p.meta, 0.125
    )
    assert rel(out, want) < (1e-3 if page_size == 256 else fp32_tol())
    assert calls == ([] if page_size == 16 else ["kvcache" if max(query_lens) == 1 else "varlen"])


def test_flash_backend_missing_library_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails
    from runtime.kernels.backend import create_backend
    from runtime.kernels.flash_attn_backend import FlashAttnUnavailable

    with pytest.raises(FlashAttnUnavailable, match="pip install flash-attn"):
        create_backend("flash_attn")
