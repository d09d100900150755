"""The Mamba-2 mixer of Nemotron-H: one projection to [gate | x B C | dt], a short causal
depthwise convolution (with bias) and SiLU over x B C, the selective state-space scan
(runtime/kernels/torch_mamba2.py) from a per-sequence state, a grouped RMS norm gated by
silu(gate), and the output projection.

Parameter names equal transformers' (`mixer.in_proj`, `mixer.conv1d`, `mixer.A_log`, `mixer.D`,
`mixer.dt_bias`, `mixer.norm`, `mixer.out_proj`). States live in the pool bound to the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.forward_context import ForwardContext
from runtime.kernels import torch_linear_attn as conv_ref
from runtime.kernels import torch_mamba2 as ssd
from runtime.models.recurrent_state import BoundStates, StateShape


class GroupedGatedRMSNorm(nn.Module):
    """x * silu(gate), then RMS-normed per group of `group` channels, in fp32."""

    def __init__(self, dim: int, group: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group, self.eps = group, eps

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float() * F.silu(gate.float())
        h = F.rms_norm(h.view(*h.shape[:-1], -1, self.group), (self.group,), eps=self.eps)
        return self.weight * h.view(*x.shape).to(dtype)


class Mamba2Mixer(nn.Module):
    """One Mamba-2 layer over the flattened batch; updates the bound states."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        m = cfg.mamba
        assert m is not None, "a Mamba2Mixer needs the config's mamba dimensions"
        self.layer_idx = layer_idx
        self.h, self.p, self.n, self.g = m.num_heads, m.head_dim, m.state_size, m.n_groups
        self.inner = self.h * self.p
        self.conv_dim = self.inner + 2 * self.g * self.n
        self.kernel, self.chunk, self.dt_min = m.conv_kernel, m.chunk_size, m.time_step_min
        self.in_proj = nn.Linear(cfg.hidden_size, self.inner + self.conv_dim + self.h,
                                 bias=m.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.kernel, bias=m.use_conv_bias,
                                groups=self.conv_dim, padding=self.kernel - 1)
        self.dt_bias = nn.Parameter(torch.ones(self.h))
        self.A_log = nn.Parameter(torch.zeros(self.h))
        self.D = nn.Parameter(torch.ones(self.h))
        self.norm = GroupedGatedRMSNorm(self.inner, self.inner // self.g, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(self.inner, cfg.hidden_size, bias=m.use_bias)

    def state_shape(self) -> StateShape:
        return StateShape((self.conv_dim, self.kernel - 1), (self.h, self.p, self.n))

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        """x `(T, hidden)` -> `(T, hidden)`."""
        states = ctx.states
        assert states is not None, "hybrid models need recurrent-state slots in ctx.states"
        gate, xbc, dt = ctx.ops.linear(x, self.in_proj).split(
            [self.inner, self.conv_dim, self.h], dim=-1)
        a = -torch.exp(self.A_log.float())
        if ctx.meta.is_decode:
            y = self._decode(xbc, dt, a, states)
        else:
            y = self._prefill(xbc, dt, a, states)
        # Normed in the scan's dtype (fp32 after a prefill), as transformers does.
        y = self.norm(y.reshape(x.shape[0], self.inner), gate).to(x.dtype)
        return ctx.ops.linear(y, self.out_proj)

    def _split(self, conv_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t, gn = conv_out.shape[0], self.g * self.n
        xs, b, c = conv_out.split([self.inner, gn, gn], dim=-1)
        return (xs.reshape(t, self.h, self.p), b.reshape(t, self.g, self.n),
                c.reshape(t, self.g, self.n))

    def _decode(self, xbc: Tensor, dt: Tensor, a: Tensor, states: BoundStates) -> Tensor:
        idx = states.slot_index(xbc.device)
        conv_s, rec_s = states.pool.conv[self.layer_idx], states.pool.recurrent[self.layer_idx]
        conv_out, conv_s[idx] = conv_ref.causal_conv_step(
            xbc, conv_s[idx], self.conv1d.weight[:, 0], self.conv1d.bias)
        xs, b, c = self._split(conv_out)
        y, rec_s[idx] = ssd.ssd_step(xs, dt, a, b, c, self.D, self.dt_bias, rec_s[idx])
        return y  # (B, H, P)

    def _prefill(self, xbc: Tensor, dt: Tensor, a: Tensor, states: BoundStates) -> Tensor:
        conv_s, rec_s = states.pool.conv[self.layer_idx], states.pool.recurrent[self.layer_idx]
        outs, start = [], 0
        for slot, n in zip(states.slots, states.meta.query_lens_cpu, strict=True):
            rows = slice(start, start + n)
            conv_out, conv_s[slot] = conv_ref.causal_conv(
                xbc[rows], conv_s[slot], self.conv1d.weight[:, 0], self.conv1d.bias)
            xs, b, c = self._split(conv_out)
            y, rec_s[slot] = ssd.ssd_chunked(xs, dt[rows], a, b, c, self.D, self.dt_bias,
                                             self.dt_min, rec_s[slot], self.chunk)
            outs.append(y)
            start += n
        return torch.cat(outs)  # (T, H, P)
