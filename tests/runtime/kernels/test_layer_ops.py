"""Layer ops: chosen per device, options as values, and the MoE sum against a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runtime.kernels.layer_ops import OpsOptions, TorchOps, layer_ops
from runtime.kernels.torch_moe import GATHER_MAX_ROWS, ExpertActivation
from runtime.models.llama import RMSNorm


class Experts(nn.Module):
    def __init__(self, e: int, h: int, f: int, bias: bool, activation: ExpertActivation):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.gate_up = torch.randn(e, 2 * f, h, generator=g) * 0.3
        self.down = torch.randn(e, h, f, generator=g) * 0.3
        self.gate_up_bias = torch.randn(e, 2 * f, generator=g) if bias else None
        self.down_bias = torch.randn(e, h, generator=g) if bias else None
        self.activation = activation


def naive_moe(x, ids, weights, ex: Experts) -> torch.Tensor:
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = ex.gate_up[e] @ x[t] + (0 if ex.gate_up_bias is None else ex.gate_up_bias[e])
            y = ex.down[e] @ ex.activation(h) + (0 if ex.down_bias is None else ex.down_bias[e])
            out[t] += weights[t, j] * y
    return out


@pytest.mark.parametrize("tokens", [1, 3, 40])  # gather path (<= 16 routed rows), sorted path
@pytest.mark.parametrize("kind, bias", [("silu", False), ("swiglu_clamped", True)])
def test_moe_matches_a_naive_loop(tokens, kind, bias):
    ex = Experts(6, 32, 24, bias, ExpertActivation(kind, alpha=1.702, limit=2.0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, 32, generator=g) * 3  # large enough that the clamp bites
    ids = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(tokens)])
    weights = torch.softmax(torch.randn(tokens, 3, generator=g), -1)
    assert (ids.numel() <= GATHER_MAX_ROWS) == (tokens < 6)
    got = TorchOps().moe(x, ids, weights, ex)
    torch.testing.assert_close(got, naive_moe(x, ids, weights, ex), rtol=1e-5, atol=1e-5)


def test_clamped_swiglu_follows_gpt_oss():
    act = ExpertActivation("swiglu_clamped", alpha=1.702, limit=7.0)
    gate = torch.tensor([-9.0, 0.5, 9.0])
    up = torch.tensor([9.0, -0.25, -9.0])
    want = []
    for g_, u in zip(gate.tolist(), up.tolist()):
        g_, u = min(g_, 7.0), max(-7.0, min(u, 7.0))
        want.append((u + 1) * g_ / (1 + torch.exp(torch.tensor(-1.702 * g_))))
    torch.testing.assert_close(act(torch.cat([gate, up])), torch.stack(want))


def test_ops_are_chosen_per_device_and_options_are_values():
    ops = layer_ops("cpu")
    assert isinstance(ops, TorchOps) and ops.options == OpsOptions()
    off = ops.with_options(pdl=False)
    assert type(off) is type(ops) and not off.options.pdl and off.options.decode_gemv
    assert ops.options.pdl  # the original is untouched
    with pytest.raises(TypeError):
        ops.with_options(no_such_switch=False)


def test_torch_ops_norm_add_and_mlp():
    ops, g = TorchOps(), torch.Generator().manual_seed(2)
    x, res = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    norm = RMSNorm(16, 1e-5)
    out, new_res = ops.add_norm(x, res, norm)
    torch.testing.assert_close(new_res, x + res)
    torch.testing.assert_close(out, norm(x + res))
    down = nn.Linear(8, 16, bias=False)
    gate_up = torch.randn(4, 16, generator=g)
    torch.testing.assert_close(ops.gated_mlp(gate_up, down),
                               down(F.silu(gate_up[:, :8]) * gate_up[:, 8:]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_ops_match_torch_ops_on_the_gpu():
    """Every TritonOps method agrees with TorchOps in bf16, with the GEMV on and off."""
    ref, g = TorchOps(), torch.Generator(device="cuda").manual_seed(3)
    for ops in (layer_ops("cuda"), layer_ops("cuda").with_options(decode_gemv=False, pdl=False)):
        assert ops.name == "triton"
        for t in (1, 7):
            x = torch.randn(t, 256, device="cuda", dtype=torch.bfloat16, generator=g)
            lin = nn.Linear(256, 384, device="cuda", dtype=torch.bfloat16)
            _close(ops.linear(x, lin), ref.linear(x, lin))
            norm = RMSNorm(256, 1e-5).to("cuda", torch.bfloat16)
            _close(ops.add_norm(x, x * 2, norm)[0], ref.add_norm(x, x * 2, norm)[0])
            down = nn.Linear(192, 256, bias=False, device="cuda", dtype=torch.bfloat16)
            gate_up = lin(x)
            _close(ops.gated_mlp(gate_up, down), ref.gated_mlp(gate_up, down))
            q = torch.randn(t, 4, 64, device="cuda", dtype=torch.bfloat16, generator=g)
            cos, sin = torch.rand(t, 32, device="cuda"), torch.rand(t, 32, device="cuda")
            want = ref.rope(q.clone(), cos, sin)
            _close(ops.rope(q, cos, sin), want)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()
