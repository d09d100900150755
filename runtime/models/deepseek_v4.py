"""DeepSeek-V4 (`DeepseekV4ForCausalLM`): compressed attention (compressed_attention.py),
manifold-constrained hyper-connections instead of residual adds, and a MoE in every layer.

Hyper-connections keep `hc_mult` copies ("streams") of the hidden state per token. Before a
block, learned weights computed from all streams collapse them into the block's input
(`pre`); after it, the output is spread back over the streams (`post`) and added to the
streams mixed by a doubly-stochastic matrix (`comb`, from Sinkhorn-Knopp iterations). A head
collapses the streams before the final norm. All of it in fp32, as transformers computes it.

The MoE scores experts with sqrt(softplus) (or the config's `scoring_func`), chooses the top
k by score plus `e_score_correction_bias`, or, in the first `hash_moe` layers, by a fixed
token -> experts table (`tid2eid`); weights are the chosen scores renormalised and scaled.
Experts and the shared expert clamp gate and up to `swiglu_limit`. Names equal transformers'.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig, RopeScaling
from runtime.forward_context import ForwardContext
from runtime.kernels.torch_moe import ExpertActivation
from runtime.models.compressed_attention import CompressedAttention, Ropes, UnweightedRMSNorm
from runtime.models.deepseek_v3 import score_experts
from runtime.models.llama import CausalLM, RMSNorm
from runtime.models.moe import Experts
from runtime.rope import RotaryEmbedding

# Parameters transformers keeps in fp32 whatever the model's dtype (its _keep_in_fp32_modules).
FP32_PARAMS = ("attn_hc.", "ffn_hc.", "hc_head.", "sinks", "position_bias",
               "e_score_correction_bias", "norm.weight", "layernorm.weight",
               "compressor.kv_proj", "compressor.gate_proj", "indexer.kv_proj",
               "indexer.gate_proj", "weights_proj")  # fmt: skip


class HyperConnection(nn.Module):
    """The pre / post / comb weights of one block from its `hc_mult` input streams."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v4 = cfg.v4
        assert v4 is not None
        n = v4.hc_mult
        self.n, self.iters, self.eps = n, v4.hc_sinkhorn_iters, v4.hc_eps
        self.input_norm = UnweightedRMSNorm(cfg.rms_norm_eps)
        self.fn = nn.Parameter(torch.empty((2 + n) * n, n * cfg.hidden_size))
        self.base = nn.Parameter(torch.empty((2 + n) * n))
        self.scale = nn.Parameter(torch.empty(3))

    def forward(self, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """streams `(T, n, H)` -> post `(T, n)`, comb `(T, n, n)`, collapsed `(T, H)`."""
        n = self.n
        mixes = F.linear(self.input_norm(streams.flatten(1).float()), self.fn.float())
        pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.split([n, n, n * n])
        pre_s, post_s, comb_s = self.scale.unbind(0)
        pre = torch.sigmoid(pre_w * pre_s + pre_b) + self.eps
        post = 2 * torch.sigmoid(post_w * post_s + post_b)
        comb = torch.softmax(comb_w.view(-1, n, n) * comb_s + comb_b.view(n, n), dim=-1) + self.eps
        comb = comb / (comb.sum(dim=-2, keepdim=True) + self.eps)
        for _ in range(self.iters - 1):  # Sinkhorn-Knopp towards doubly stochastic
            comb = comb / (comb.sum(dim=-1, keepdim=True) + self.eps)
            comb = comb / (comb.sum(dim=-2, keepdim=True) + self.eps)
        collapsed = (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)
        return post, comb, collapsed


def merge_streams(streams: Tensor, out: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """`post * out` spread over the streams plus the streams mixed by `comb^T`."""
    dtype = streams.dtype
    return (post.to(dtype).unsqueeze(-1) * out.unsqueeze(-2)
            + torch.matmul(comb.to(dtype).transpose(-1, -2), streams))


class HyperHead(nn.Module):
    """The final collapse of the streams (sigmoid weights, no mixing)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.v4.hc_mult if cfg.v4 else 1
        self.eps = cfg.v4.hc_eps if cfg.v4 else 0.0
        self.input_norm = UnweightedRMSNorm(cfg.rms_norm_eps)
        self.hc_fn = nn.Parameter(torch.empty(n, n * cfg.hidden_size))
        self.hc_base = nn.Parameter(torch.empty(n))
        self.hc_scale = nn.Parameter(torch.empty(1))

    def forward(self, streams: Tensor) -> Tensor:
        mixes = F.linear(self.input_norm(streams.flatten(1).float()), self.hc_fn.float())
        pre = torch.sigmoid(mixes * self.hc_scale.float() + self.hc_base.float()) + self.eps
        return (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)


class ClampedMLP(nn.Module):
    """The shared expert: down(silu(min(gate, l)) * clamp(up, -l, l))."""

    def __init__(self, cfg: ModelConfig, limit: float):
        super().__init__()
        h, f = cfg.hidden_size, cfg.moe_intermediate_size
        self.limit = limit
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gate_proj(x).clamp(max=self.limit)
        up = self.up_proj(x).clamp(min=-self.limit, max=self.limit)
        return self.down_proj(F.silu(gate) * up)


class V4Router(nn.Module):
    """Learned top-k (with the correction bias) or, on hash layers, the `tid2eid` table."""

    def __init__(self, cfg: ModelConfig, hashed: bool):
        super().__init__()
        assert cfg.router is not None
        self.gating, self.top_k, self.hashed = cfg.router, cfg.num_experts_per_tok, hashed
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        if hashed:
            self.tid2eid = nn.Parameter(torch.zeros(cfg.vocab_size, self.top_k,
                                                    dtype=torch.long), requires_grad=False)
        else:
            self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.num_experts),
                                                        requires_grad=False)

    def forward(self, x: Tensor, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        scores = score_experts(F.linear(x, self.weight), self.gating.scoring)  # (T, E)
        if self.hashed:
            ids = self.tid2eid[input_ids].long()
        else:
            ids = torch.topk(scores + self.e_score_correction_bias, self.top_k, dim=-1,
                             sorted=False).indices
        weights = scores.gather(1, ids)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, weights * self.gating.routed_scaling_factor


class V4MoE(nn.Module):
    """Routed experts (clamped SwiGLU) plus the shared expert."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        v4 = cfg.v4
        assert v4 is not None
        self.gate = V4Router(cfg, hashed=layer_idx in v4.hash_layers)
        self.experts = Experts(cfg, ExpertActivation("silu_clamped", limit=v4.swiglu_limit),
                               bias=False)
        self.shared_experts = ClampedMLP(cfg, v4.swiglu_limit)

    def forward(self, x: Tensor, input_ids: Tensor, ctx: ForwardContext) -> Tensor:
        ids, weights = self.gate(x, input_ids)
        return ctx.ops.moe(x, ids, weights, self.experts) + self.shared_experts(x)


class V4DecoderLayer(nn.Module):
    """Attention then MoE, each between a hyper-connection's collapse and merge."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = CompressedAttention(cfg, layer_idx)
        self.mlp = V4MoE(cfg, layer_idx)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, weight_in_fp32=True)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                                weight_in_fp32=True)
        self.attn_hc = HyperConnection(cfg)
        self.ffn_hc = HyperConnection(cfg)

    def forward(self, streams: Tensor, input_ids: Tensor, positions: Tensor, ropes: Ropes,
                ctx: ForwardContext) -> Tensor:
        post, comb, x = self.attn_hc(streams)
        out = self.self_attn(self.input_layernorm(x), positions, ropes, ctx)
        streams = merge_streams(streams, out, post, comb)
        post, comb, x = self.ffn_hc(streams)
        out = self.mlp(self.post_attention_layernorm(x), input_ids, ctx)
        return merge_streams(streams, out, post, comb)


class V4Model(nn.Module):
    """Embedding, V4 layers, the hyper-head and the final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v4 = cfg.v4
        assert v4 is not None
        self.hc_mult = v4.hc_mult
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(V4DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.hc_head = HyperHead(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, weight_in_fp32=True)
        plain = replace(cfg, head_dim=v4.rope_dim, rope_scaling=RopeScaling())
        self.rope_main = RotaryEmbedding(plain)
        self.rope_compress = RotaryEmbedding(replace(plain, rope_theta=v4.compress_rope_theta))

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        streams = x.unsqueeze(1).expand(-1, self.hc_mult, -1).contiguous()  # (T, n, hidden)
        ropes = Ropes(self.rope_main, self.rope_compress, ctx.meta.max_seq_len)
        for layer in self.layers:
            streams = layer(streams, input_ids, positions, ropes, ctx)
        return self.norm(self.hc_head(streams))


class DeepseekV4ForCausalLM(CausalLM):
    """The DeepSeek-V4 CausalLM; `keeps_fp32` names the parameters loaded in fp32.

    Its attention loops over the batch's sequences on the host (their windows and entries
    differ), so decode steps are not captured in CUDA graphs (`graph_safe`)."""

    graph_safe = False

    @staticmethod
    def make_decoder(cfg: ModelConfig, mlp_for) -> nn.Module:
        return V4Model(cfg)

    @staticmethod
    def keeps_fp32(name: str) -> bool:
        return any(part in name for part in FP32_PARAMS)

    def fuse_projections(self) -> None:
        """Nothing to fuse: V4's projections are single matmuls already."""
