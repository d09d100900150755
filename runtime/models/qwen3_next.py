"""Hybrid linear-attention causal LMs: Qwen3-Next / Qwen3-Coder-Next (`qwen3_next`) and
Qwen3.5 / 3.6, dense (`qwen3_5`) and MoE (`qwen3_5_moe`).

The layer pattern comes from the config's `layer_types`: most layers are Gated DeltaNet
(gated_deltanet.py, a fixed-size state per sequence), every few a gated full-attention layer
(q/k norm, partial rope, output gated by sigmoid of a second half of q_proj) over the paged
KV cache. Norms are zero-centred (`x * (1 + w)` in fp32). The feed-forward is the dense
SwiGLU (Qwen3.5) or routed experts plus a sigmoid-gated shared expert (Qwen3-Next,
Qwen3.5-MoE; Qwen3-Next's dense layers follow `decoder_sparse_step` / `mlp_only_layers`).
Parameter names equal transformers'; text-only checkpoints (`*ForCausalLM`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.forward_context import ForwardContext
from runtime.kernels.layer_ops import LayerOps
from runtime.kernels.torch_moe import ExpertActivation
from runtime.models.gated_deltanet import GatedDeltaNet
from runtime.models.llama import MLP, CausalLM
from runtime.models.moe import Experts, TopKRouter, route_and_run
from runtime.models.recurrent_state import RecurrentStatePool, StateShape
from runtime.rope import RotaryEmbedding


class ZeroCenteredRMSNorm(nn.Module):
    """RMSNorm whose weight is an offset from one: `norm(x) * (1 + w)`, all in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        out = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (out * (1.0 + self.weight.float())).to(x.dtype)


class GatedAttention(nn.Module):
    """GQA attention with q/k norm, rope on the first `rotary_dim` dims of each head, and its
    output multiplied by sigmoid(gate), the gate being q_proj's second half per head."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hq, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rot = cfg.rotary_dim
        self.scale = cfg.head_dim**-0.5
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, 2 * self.hq * self.d, bias=bias)
        self.k_proj = nn.Linear(h, self.hkv * self.d, bias=bias)
        self.v_proj = nn.Linear(h, self.hkv * self.d, bias=bias)
        self.o_proj = nn.Linear(self.hq * self.d, h, bias=bias)
        self.q_norm = ZeroCenteredRMSNorm(self.d, cfg.rms_norm_eps)
        self.k_norm = ZeroCenteredRMSNorm(self.d, cfg.rms_norm_eps)

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor, ops: LayerOps) -> Tensor:
        if self.rot == self.d:
            return ops.rope(x, cos, sin)
        rotated = ops.rope(x[..., : self.rot].contiguous(), cos, sin)
        return torch.cat([rotated, x[..., self.rot :]], dim=-1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: ForwardContext) -> Tensor:
        t, ops = x.shape[0], ctx.ops
        q, gate = ops.linear(x, self.q_proj).view(t, self.hq, 2 * self.d).chunk(2, dim=-1)
        q = self._rope(self.q_norm(q), cos, sin, ops)  # (T, Hq, D)
        k = self._rope(self.k_norm(ops.linear(x, self.k_proj).view(t, self.hkv, self.d)),
                       cos, sin, ops)
        v = ops.linear(x, self.v_proj).view(t, self.hkv, self.d)
        out = ctx.attend(self.layer_idx, q, k, v, self.scale).reshape(t, self.hq * self.d)
        return ops.linear(out * torch.sigmoid(gate.reshape(t, -1)), self.o_proj)


class SharedExpertMoe(nn.Module):
    """Routed experts (softmax, top k) plus a shared expert scaled by sigmoid(shared gate)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = TopKRouter(cfg, bias=False, softmax_then_topk=True)
        self.experts = Experts(cfg, ExpertActivation("silu"), bias=False)
        shared = replace(cfg, intermediate_size=cfg.shared_expert_intermediate_size)
        self.shared_expert = MLP(shared)
        self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x: Tensor, ops: LayerOps) -> Tensor:
        shared = torch.sigmoid(ops.linear(x, self.shared_expert_gate)) * self.shared_expert(x, ops)
        return route_and_run(self.gate, self.experts, x, ops) + shared


class HybridDecoderLayer(nn.Module):
    """Pre-norm block whose token mixer is Gated DeltaNet (`linear_attn`) or GatedAttention
    (`self_attn`); the residual adds are plain (the norms are zero-centred, not fused)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, mlp: nn.Module):
        super().__init__()
        self.linear_attn: GatedDeltaNet | None = None
        self.self_attn: GatedAttention | None = None
        if cfg.is_linear_layer(layer_idx):
            grouped = cfg.family == "qwen3_next"
            self.linear_attn = GatedDeltaNet(cfg, layer_idx, grouped_proj=grouped)
        else:
            self.self_attn = GatedAttention(cfg, layer_idx)
        self.mlp = mlp
        self.input_layernorm = ZeroCenteredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = ZeroCenteredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: ForwardContext) -> Tensor:
        h = self.input_layernorm(x)
        if self.linear_attn is not None:
            h = self.linear_attn(h, ctx)
        else:
            assert self.self_attn is not None
            h = self.self_attn(h, cos, sin, ctx)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x), ctx.ops)


class HybridModel(nn.Module):
    """Embedding, hybrid layers and the final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig, mlp_for):
        super().__init__()
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(
            HybridDecoderLayer(cfg, i, mlp_for(cfg, i)) for i in range(cfg.num_layers)
        )
        self.norm = ZeroCenteredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(replace(cfg, head_dim=cfg.rotary_dim))

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        assert ctx.states is not None, "hybrid models need recurrent-state slots in ctx.states"
        x = self.embed_tokens(input_ids)  # (T, hidden)
        cos, sin = self.rotary(positions, ctx.meta.max_seq_len)  # (T, rotary_dim / 2)
        for layer in self.layers:
            x = layer(x, cos, sin, ctx)
        ctx.states.finish()
        return self.norm(x)


class Qwen3NextForCausalLM(CausalLM):
    """The hybrid CausalLM; `new_state_pool` gives the recurrent-state slots its forwards need
    (bound per forward into `ForwardContext.states`)."""

    @staticmethod
    def make_decoder(cfg: ModelConfig, mlp_for) -> nn.Module:
        return HybridModel(cfg, mlp_for)

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer_idx: int) -> nn.Module:
        return SharedExpertMoe(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg)

    def state_shapes(self) -> dict[int, StateShape]:
        """Per linear layer, the shape of one sequence's state."""
        return {i: layer.linear_attn.state_shape() for i, layer in enumerate(self.model.layers)
                if layer.linear_attn is not None}

    def new_state_pool(self, num_slots: int, device: torch.device | str = "cpu"
                       ) -> RecurrentStatePool:
        dtype = self.model.embed_tokens.weight.dtype
        return RecurrentStatePool(self.state_shapes(), num_slots, dtype, device)

    def fuse_projections(self) -> None:
        """gate/up of the dense and shared-expert MLPs as single matmuls; after loading only."""
        for mlp in [m for m in self.modules() if isinstance(m, MLP)]:
            mlp.fuse()
