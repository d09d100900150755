"""Gated DeltaNet, the linear-attention layer of Qwen3-Next and Qwen3.5 / 3.6.

Per token: project to q, k, v (through a short causal depthwise convolution and SiLU), a gate
z, a write strength beta = sigmoid(b) and a log decay g = -exp(A_log) * softplus(a + dt_bias);
the gated delta rule (runtime/kernels/torch_linear_attn.py) reads and updates a per-sequence
state; the output is RMS-normed per head, gated by silu(z) and projected back.

Parameter names equal transformers'. Qwen3-Next projects q/k/v/z and b/a with two matmuls
whose outputs are grouped per key head (`in_proj_qkvz`, `in_proj_ba`); Qwen3.5 has one
matmul each, laid out flat (`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`).
The states live in the pool bound to the forward (`ctx.states`, recurrent_state.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.forward_context import ForwardContext
from runtime.kernels import torch_linear_attn as ref
from runtime.models.recurrent_state import BoundStates, StateShape


class GatedRMSNorm(nn.Module):
    """RMSNorm per head, then times silu(gate), in fp32 (transformers' RMSNormGated)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        dtype = x.dtype
        x = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (self.weight * x.to(dtype) * F.silu(gate.float())).to(dtype)


class GatedDeltaNet(nn.Module):
    """One linear-attention layer; `grouped_proj` selects Qwen3-Next's projection layout."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, grouped_proj: bool):
        super().__init__()
        la = cfg.linear_attention
        assert la is not None, "a GatedDeltaNet layer needs the config's linear_attention"
        self.layer_idx = layer_idx
        self.hk, self.hv, self.dk, self.dv = (la.num_key_heads, la.num_value_heads,
                                              la.key_head_dim, la.value_head_dim)
        self.key_dim, self.value_dim = self.hk * self.dk, self.hv * self.dv
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.kernel = la.conv_kernel
        self.grouped_proj = grouped_proj
        h = cfg.hidden_size
        if grouped_proj:
            self.in_proj_qkvz = nn.Linear(h, 2 * self.key_dim + 2 * self.value_dim, bias=False)
            self.in_proj_ba = nn.Linear(h, 2 * self.hv, bias=False)
        else:
            self.in_proj_qkv = nn.Linear(h, self.conv_dim, bias=False)
            self.in_proj_z = nn.Linear(h, self.value_dim, bias=False)
            self.in_proj_b = nn.Linear(h, self.hv, bias=False)
            self.in_proj_a = nn.Linear(h, self.hv, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.kernel, bias=False,
                                groups=self.conv_dim, padding=self.kernel - 1)
        self.dt_bias = nn.Parameter(torch.ones(self.hv))
        self.A_log = nn.Parameter(torch.zeros(self.hv))
        self.norm = GatedRMSNorm(self.dv, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, h, bias=False)

    def state_shape(self) -> StateShape:
        return StateShape((self.conv_dim, self.kernel - 1), (self.hv, self.dk, self.dv))

    def _project(self, x: Tensor, ctx: ForwardContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x `(T, hidden)` -> conv input `(T, C)` = [q | k | v] flat, z `(T, Hv, Dv)`, b, a."""
        t, lin = x.shape[0], ctx.ops.linear
        if not self.grouped_proj:
            z = lin(x, self.in_proj_z).view(t, self.hv, self.dv)
            return lin(x, self.in_proj_qkv), z, lin(x, self.in_proj_b), lin(x, self.in_proj_a)
        r = self.hv // self.hk  # value heads per key head
        qkvz = lin(x, self.in_proj_qkvz).view(t, self.hk, 2 * self.dk + 2 * r * self.dv)
        q, k, v, z = qkvz.split([self.dk, self.dk, r * self.dv, r * self.dv], dim=-1)
        ba = lin(x, self.in_proj_ba).view(t, self.hk, 2 * r)
        b, a = ba.split([r, r], dim=-1)
        mixed = torch.cat([q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1)], dim=-1)
        return mixed, z.reshape(t, self.hv, self.dv), b.reshape(t, -1), a.reshape(t, -1)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        """x `(T, hidden)` flattened over the batch -> `(T, hidden)`; updates the bound states."""
        states = ctx.states
        assert states is not None, "hybrid models need recurrent-state slots in ctx.states"
        mixed, z, b, a = self._project(x, ctx)
        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)  # (T, Hv) fp32
        if ctx.meta.is_decode:
            out = self._decode(mixed, g, beta, states)
        else:
            out = self._prefill(mixed, g, beta, states)
        out = self.norm(out.reshape(-1, self.dv), z.reshape(-1, self.dv))  # (T * Hv, Dv)
        return ctx.ops.linear(out.reshape(x.shape[0], self.value_dim), self.out_proj)

    def _split(self, conv_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = conv_out.shape[0]
        q, k, v = conv_out.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        return (q.reshape(t, self.hk, self.dk), k.reshape(t, self.hk, self.dk),
                v.reshape(t, self.hv, self.dv))

    def _decode(self, mixed: Tensor, g: Tensor, beta: Tensor, states: BoundStates) -> Tensor:
        """One token per sequence: gather the slots, one recurrent step, scatter back."""
        idx = states.slot_index(mixed.device)
        conv_s, rec_s = states.pool.conv[self.layer_idx], states.pool.recurrent[self.layer_idx]
        conv_out, conv_s[idx] = ref.causal_conv_step(mixed, conv_s[idx], self.conv1d.weight[:, 0])
        q, k, v = self._split(conv_out)
        out, rec_s[idx] = ref.gated_delta_step(q, k, v, g, beta, rec_s[idx])
        return out  # (B, Hv, Dv)

    def _prefill(self, mixed: Tensor, g: Tensor, beta: Tensor, states: BoundStates) -> Tensor:
        """Sequence by sequence: convolution and chunked scan from each slot's state."""
        conv_s, rec_s = states.pool.conv[self.layer_idx], states.pool.recurrent[self.layer_idx]
        weight = self.conv1d.weight[:, 0]  # (C, K)
        outs, start = [], 0
        for slot, n in zip(states.slots, states.meta.query_lens_cpu, strict=True):
            rows = slice(start, start + n)
            conv_out, conv_s[slot] = ref.causal_conv(mixed[rows], conv_s[slot], weight)
            q, k, v = self._split(conv_out)
            if n == 1:  # one token: the step, as decode computes it
                out, rec = ref.gated_delta_step(q, k, v, g[rows], beta[rows], rec_s[slot][None])
                rec_s[slot] = rec[0]
            else:
                out, rec_s[slot] = ref.gated_delta_chunked(q, k, v, g[rows], beta[rows],
                                                           rec_s[slot])
            outs.append(out)
            start += n
        return torch.cat(outs)  # (T, Hv, Dv)

