"""Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash): queries through a low-rank
bottleneck, keys and values from one cached latent per token.

Per token and layer the paged cache holds `kv_lora_rank + qk_rope_head_dim` values: the
normalised latent `c = norm(x W_dkv)` and the rotated rope key shared by all heads. Prefill
chunks up-project the cached latents (expanded form); decode steps fold kv_b_proj into the
query and attend in latent space (absorbed form); runtime/kernels/latent_backend.py has both.
Parameter names equal transformers' (`q_a_proj`, `q_a_layernorm`, `q_b_proj`,
`kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj`, `o_proj`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.forward_context import ForwardContext
from runtime.kernels.latent_backend import latent_backend
from runtime.models.llama import RMSNorm

LORA_NORM_EPS = 1e-6  # transformers builds q_a_layernorm / kv_a_layernorm with the default eps


def deinterleave(x: Tensor) -> Tensor:
    """DeepSeek's interleaved rope pairs `(x0, x1), (x2, x3)...` as HF's halves `[evens | odds]`
    (transformers rotates them so, and caches the result in that order)."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def mla_scale(cfg: ModelConfig) -> float:
    """qk_head_dim^-0.5, times yarn's mscale squared when `mscale_all_dim` is set (HF)."""
    assert cfg.mla is not None
    scale = cfg.mla.qk_head_dim**-0.5
    s = cfg.rope_scaling
    if s.type != "default" and s.mscale_all_dim and s.factor > 1:
        m = 0.1 * s.mscale_all_dim * math.log(s.factor) + 1.0
        scale *= m * m
    return scale


class LatentSelfAttention(nn.Module):
    """MLA with a latent cache row per token (see the module doc)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        m = cfg.mla
        assert m is not None, "LatentSelfAttention needs cfg.mla"
        self.layer_idx, self.m, self.num_heads = layer_idx, m, cfg.num_heads
        h, bias, q_dim = cfg.hidden_size, cfg.attention_bias, cfg.num_heads * m.qk_head_dim
        self.q_proj: nn.Linear | None = None
        if m.q_lora_rank is None:
            self.q_proj = nn.Linear(h, q_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(h, m.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, LORA_NORM_EPS)
            self.q_b_proj = nn.Linear(m.q_lora_rank, q_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, m.latent_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, LORA_NORM_EPS)
        self.kv_b_proj = nn.Linear(m.kv_lora_rank,
                                   cfg.num_heads * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * m.v_head_dim, h, bias=bias)
        self.scale = mla_scale(cfg)

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: ForwardContext) -> Tensor:
        return ctx.ops.rope(deinterleave(x) if self.m.rope_interleave else x, cos, sin)

    def _queries(self, x: Tensor, ops) -> Tensor:
        if self.q_proj is not None:
            return ops.linear(x, self.q_proj)
        return ops.linear(self.q_a_layernorm(ops.linear(x, self.q_a_proj)), self.q_b_proj)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: ForwardContext) -> Tensor:
        t, m, ops = x.shape[0], self.m, ctx.ops
        q = self._queries(x, ops).view(t, self.num_heads, m.qk_head_dim)
        q_nope, q_rope = q.split([m.qk_nope_head_dim, m.qk_rope_head_dim], dim=-1)
        c, k_rope = ops.linear(x, self.kv_a_proj_with_mqa).split(
            [m.kv_lora_rank, m.qk_rope_head_dim], dim=-1)
        q_rope = self._rope(q_rope, cos, sin, ctx)  # (T, H, Dr)
        k_rope = self._rope(k_rope[:, None, :], cos, sin, ctx)[:, 0]  # (T, Dr)
        latent = torch.cat([self.kv_a_layernorm(c), k_rope], dim=-1)  # (T, R + Dr)
        backend = latent_backend(ctx.backend.name)
        cache = ctx.kv[self.layer_idx][0]
        backend.store(cache, latent, ctx.meta)
        w_kv = self.kv_b_proj.weight.view(self.num_heads, -1, m.kv_lora_rank)  # (H, Dn+Dv, R)
        attend = backend.decode if ctx.meta.is_decode else backend.extend
        out = attend(q_nope, q_rope, cache, w_kv, ctx.meta, self.scale)  # (T, H, Dv)
        return ops.linear(out.reshape(t, -1), self.o_proj)
