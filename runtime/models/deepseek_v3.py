"""DeepSeek-V3 (`DeepseekV3ForCausalLM`) and GLM-4.7-Flash (`Glm4MoeLiteForCausalLM`): latent
attention (mla.py) in every layer, a dense SwiGLU MLP in the first layers and routed experts
plus shared experts in the others.

The router scores experts with a sigmoid in fp32, adds `e_score_correction_bias` to choose
(never to weight), keeps the best `topk_group` groups of experts (a group ranked by the sum of
its two best scores), then the top k; the chosen scores are renormalised and multiplied by
`routed_scaling_factor`. Parameter names equal transformers'.
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
from runtime.models.llama import MLP, CausalLM, RMSNorm
from runtime.models.mla import LatentSelfAttention
from runtime.models.moe import Experts
from runtime.rope import RotaryEmbedding


def score_experts(logits: Tensor, scoring: str) -> Tensor:
    """Per-expert scores from router logits (fp32): sigmoid, sqrt(softplus) or softmax."""
    if scoring == "sigmoid":
        return logits.sigmoid()
    if scoring == "sqrtsoftplus":
        return F.softplus(logits).sqrt()
    assert scoring == "softmax", f"unknown router scoring {scoring!r}"
    return logits.softmax(dim=-1)


class GroupedTopKRouter(nn.Module):
    """DeepSeek-V3's router (see the module doc); weights come back in fp32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.router is not None
        self.gating, self.top_k, self.norm = cfg.router, cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.num_experts),
                                                    requires_grad=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x `(T, H)` -> expert ids `(T, k)` and their weights `(T, k)` fp32."""
        g = self.gating
        logits = F.linear(x.float(), self.weight.float())  # (T, E)
        scores = score_experts(logits, g.scoring)
        choice = scores + self.e_score_correction_bias.float()
        if g.n_group > 1:
            choice = self._limit_groups(choice)
        ids = torch.topk(choice, self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, ids)
        if self.norm:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, weights * g.routed_scaling_factor

    def _limit_groups(self, choice: Tensor) -> Tensor:
        t, e, g = choice.shape[0], choice.shape[1], self.gating.n_group
        grouped = choice.view(t, g, e // g)
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # (T, G)
        keep = torch.topk(group_scores, k=self.gating.topk_group, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(group_scores).scatter_(1, keep, 1).bool()  # (T, G)
        mask = mask[:, :, None].expand(-1, -1, e // g).reshape(t, e)
        return choice.masked_fill(~mask, float("-inf"))


class DeepseekMoE(nn.Module):
    """Routed experts (SwiGLU) plus `n_shared_experts` shared ones as one wider MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.router is not None
        self.gate = GroupedTopKRouter(cfg)
        self.experts = Experts(cfg, ExpertActivation("silu"), bias=False)
        shared = cfg.moe_intermediate_size * cfg.router.n_shared_experts
        self.shared_experts = MLP(replace(cfg, intermediate_size=shared))

    def forward(self, x: Tensor, ops: LayerOps) -> Tensor:
        ids, weights = self.gate(x)  # fp32 weights, applied in x's dtype as the ops do
        return ops.moe(x, ids, weights.to(x.dtype), self.experts) + self.shared_experts(x, ops)


class LatentDecoderLayer(nn.Module):
    """Pre-norm block: x + mla(norm(x)), then x + mlp(norm(x)); adds done by the next norm."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LatentSelfAttention(cfg, layer_idx)
        self.mlp = DeepseekMoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, residual: Tensor | None, cos: Tensor, sin: Tensor,
                ctx: ForwardContext) -> tuple[Tensor, Tensor]:
        h, residual = ctx.ops.add_norm(x, residual, self.input_layernorm)
        h = self.self_attn(h, cos, sin, ctx)
        h, residual = ctx.ops.add_norm(h, residual, self.post_attention_layernorm)
        return self.mlp(h, ctx.ops), residual


class LatentModel(nn.Module):
    """Embedding, MLA decoder layers and the final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.mla is not None
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(LatentDecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(replace(cfg, head_dim=cfg.mla.qk_rope_head_dim))

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        cos, sin = self.rotary(positions, ctx.meta.max_seq_len)  # (T, Dr / 2)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, ctx)
        return ctx.ops.add_norm(x, residual, self.norm)[0]


class DeepseekV3ForCausalLM(CausalLM):
    """The MLA CausalLM (DeepSeek-V3, GLM-4.7-Flash)."""

    @staticmethod
    def make_decoder(cfg: ModelConfig, mlp_for) -> nn.Module:
        return LatentModel(cfg)

    def fuse_projections(self) -> None:
        """gate/up of the dense and shared MLPs as single matmuls; after loading only."""
        for mlp in [m for m in self.modules() if isinstance(m, MLP)]:
            mlp.fuse()
