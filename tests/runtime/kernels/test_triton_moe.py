"""The fused MoE kernels against the torch reference (interpreter on CPU in fp32; bf16 on GPU)."""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_moe import ExpertActivation, moe_reference
from runtime.kernels.triton_moe import align_routes, fused_moe

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Experts:
    def __init__(self, e, h, f, bias, activation, dtype):
        g = torch.Generator().manual_seed(e * h + f)
        self.gate_up = (torch.randn(e, 2 * f, h, generator=g) * 0.2).to(DEVICE, dtype)
        self.down = (torch.randn(e, h, f, generator=g) * 0.2).to(DEVICE, dtype)
        self.gate_up_bias = torch.randn(e, 2 * f, generator=g).to(DEVICE, dtype) if bias else None
        self.down_bias = torch.randn(e, h, generator=g).to(DEVICE, dtype) if bias else None
        self.activation = activation


def test_routes_are_sorted_by_expert_and_padded_per_block():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [2, 3]])
    rows, experts, max_blocks = align_routes(ids, 5, block_m=2)
    assert max_blocks == 4 + 5  # cdiv(8 rows, 2) + one partial block per expert at most
    blocks = rows.view(max_blocks, 2).tolist()
    got = [(e, b) for e, b in zip(experts.tolist(), blocks) if e < 5]
    # expert 0: routed rows 1, 4; expert 1: 3; expert 2: 6; expert 3: 0, 2, 5, 7
    assert got == [(0, [1, 4]), (1, [3, -1]), (2, [6, -1]), (3, [0, 2]), (3, [5, 7])]
    assert all(e == 5 for e in experts.tolist()[len(got):])


@pytest.mark.parametrize("tokens", [1, 5, 37])
@pytest.mark.parametrize("kind, bias, top_k", [("silu", False, 2), ("swiglu_clamped", True, 3),
                                               ("silu_clamped", False, 6)])
def test_fused_moe_matches_the_reference(tokens, kind, bias, top_k):
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    experts = Experts(8, 48, 40, bias, ExpertActivation(kind, 1.702, 2.0), dtype)
    g = torch.Generator().manual_seed(tokens)
    x = (torch.randn(tokens, 48, generator=g) * 2).to(DEVICE, dtype)
    ids = torch.stack([torch.randperm(8, generator=g)[:top_k] for _ in range(tokens)]).to(DEVICE)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=g), -1).to(DEVICE, dtype)
    want = moe_reference(x.float(), ids, weights.float(), _as_fp32(experts))
    got = fused_moe(x, ids, weights, experts)
    assert got.dtype == dtype and got.shape == want.shape
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < (2e-2 if DEVICE == "cuda" else 1e-5), err


def _as_fp32(experts: Experts) -> Experts:
    out = Experts.__new__(Experts)
    for name in ("gate_up", "down", "gate_up_bias", "down_bias"):
        value = getattr(experts, name)
        setattr(out, name, None if value is None else value.float())
    out.activation = experts.activation
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_moe_decode_captures_in_a_cuda_graph():
    experts = Experts(128, 256, 128, False, ExpertActivation("silu"), torch.bfloat16)
    x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
    ids = torch.tensor([[5, 77, 3, 120, 9, 64, 31, 0]], device="cuda")
    weights = torch.full((1, 8), 0.125, device="cuda", dtype=torch.bfloat16)
    eager = fused_moe(x, ids, weights, experts)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, ids, weights, experts)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
