"""One causal LM for the Llama family: Llama / Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

Parameter names equal Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`),
so a HF state dict loads as it is. Tokens of every sequence in a batch are flattened into one
dimension T; attention over the paged KV cache goes through `ForwardContext.attend`, every
other operation through `ForwardContext.ops` (runtime/kernels/layer_ops.py: torch on CPU,
Triton kernels on CUDA), so no layer here knows which device it runs on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.forward_context import ForwardContext
from runtime.kernels.cpu_quant import Int4Linear
from runtime.kernels.layer_ops import LayerOps, layer_ops
from runtime.rope import RotaryEmbedding


class RMSNorm(nn.Module):
    """RMSNorm in fp32, as transformers computes it: Llama casts back before the weight,
    gpt-oss (`weight_in_fp32`) multiplies by the weight in fp32 and casts after."""

    def __init__(self, dim: int, eps: float, weight_in_fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.weight_in_fp32 = weight_in_fp32

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        # One fused kernel for x * rsqrt(mean(x^2) + eps), in fp32 like transformers.
        x = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.weight_in_fp32:
            return (self.weight * x).to(dtype)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """GQA self-attention with rotary embeddings; K/V go to the paged cache via the context.

    Per layer, from the config: a sliding window and learned sinks (gpt-oss)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=bias)
        # Qwen2 biases only q/k/v; Llama's and Qwen3's `attention_bias` covers o_proj too.
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=bias and cfg.family != "qwen2")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.window = cfg.window_of(layer_idx)
        self.sinks: nn.Parameter | None = None
        if cfg.attention_sinks:
            self.sinks = nn.Parameter(torch.empty(cfg.num_heads))
        self.qkv_proj: nn.Linear | None = None

    def fuse(self) -> None:
        """Serve q, k and v from one matmul (fewer, larger GEMMs); after loading only."""
        fused = _fused([self.q_proj, self.k_proj, self.v_proj])
        if fused is not None:
            self.qkv_proj = fused
            del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: ForwardContext) -> Tensor:
        t, hq, hkv, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        ops = ctx.ops
        if self.qkv_proj is None:
            q = self.q_proj(x).reshape(t, hq, d)
            k, v = self.k_proj(x).reshape(t, hkv, d), self.v_proj(x).reshape(t, hkv, d)
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)
        else:
            heads = ops.linear(x, self.qkv_proj).view(t, hq + 2 * hkv, d)
            q, k, v = heads.split([hq, hkv, hkv], dim=1)
            if self.qk_norm:
                q, k = ops.rope(self.q_norm(q), cos, sin), ops.rope(self.k_norm(k), cos, sin)
            else:  # q and k are adjacent in each row: both heads' sets in one rotation
                q, k = ops.rope(heads[:, : hq + hkv], cos, sin).split([hq, hkv], dim=1)
        out = ctx.attend(self.layer_idx, q, k, v, self.scale, window=self.window,
                         sinks=self.sinks)  # (T, Hq, D)
        return ops.linear(out.reshape(t, hq * d), self.o_proj)  # (T, hidden)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_proj: nn.Linear | None = None

    def fuse(self) -> None:
        """Serve gate and up from one matmul; after loading only."""
        fused = _fused([self.gate_proj, self.up_proj])
        if fused is not None:
            self.gate_up_proj = fused
            del self.gate_proj, self.up_proj

    def forward(self, x: Tensor, ops: LayerOps) -> Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return ops.gated_mlp(ops.linear(x, self.gate_up_proj), self.down_proj)


def _fused(linears: list[nn.Module]) -> nn.Module | None:
    """One Linear whose output is the concatenation of `linears`' outputs; None where packed
    CPU weights cannot be joined (runtime/kernels/cpu_quant.py), and then they stay apart."""
    if any(isinstance(m, Int4Linear) for m in linears):
        same = all(isinstance(m, Int4Linear) for m in linears)
        return Int4Linear.cat(linears) if same else None
    w = torch.cat([m.weight.data for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias.data for m in linears])
    with torch.device("meta"):
        fused = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    fused.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); each add is done by the next
    norm (fused on CUDA). The feed-forward is the family's (dense MLP or routed experts)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, mlp: nn.Module):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = mlp
        self.input_layernorm = _norm(cfg, cfg.hidden_size)
        self.post_attention_layernorm = _norm(cfg, cfg.hidden_size)

    def forward(self, x: Tensor, residual: Tensor | None, cos: Tensor, sin: Tensor,
                ctx: ForwardContext) -> tuple[Tensor, Tensor]:
        """The residual stream travels beside the block's output, so each norm can add it."""
        h, residual = ctx.ops.add_norm(x, residual, self.input_layernorm)
        h = self.self_attn(h, cos, sin, ctx)
        h, residual = ctx.ops.add_norm(h, residual, self.post_attention_layernorm)
        return self.mlp(h, ctx.ops), residual


def _norm(cfg: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.rms_norm_eps, weight_in_fp32=cfg.family == "gpt_oss")


MlpFactory = Callable[[ModelConfig, int], nn.Module]


class DecoderModel(nn.Module):
    """Embedding, decoder layers and the final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig, mlp_for: MlpFactory):
        super().__init__()
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:  # normal_ on meta imports torch._dynamo: ~1 s per process
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, mlp_for(cfg, i)) for i in range(cfg.num_layers)
        )
        self.norm = _norm(cfg, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg)

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        # Every position is below the longest sequence's length: a host int, so no device sync.
        cos, sin = self.rotary(positions, ctx.meta.max_seq_len)  # (T, D/2) each
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, ctx)
        return ctx.ops.add_norm(x, residual, self.norm)[0]


class CausalLM(nn.Module):
    """The whole model; `lm_head` is absent when the embeddings are tied.

    Families differ in their feed-forward: subclasses override `make_mlp` (qwen3_moe.py,
    gpt_oss.py); attention variants come from the config."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = self.make_decoder(cfg, self.make_mlp)
        self.lm_head: nn.Linear | None = None
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # A tied head laid out for the matmul (runtime/engine/cpu_layout.py), when one is made.
        self.packed_head: nn.Module | None = None

    @staticmethod
    def make_decoder(cfg: ModelConfig, mlp_for: MlpFactory) -> nn.Module:
        """The `model.` body: embedding, layers, final norm (hybrid families differ)."""
        return DecoderModel(cfg, mlp_for)

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer_idx: int) -> nn.Module:
        """The feed-forward of layer `layer_idx`: the dense SwiGLU MLP."""
        return MLP(cfg)

    def fuse_projections(self) -> None:
        """q/k/v and gate/up as single matmuls, layer by layer (one extra matrix at a time).

        For serving only: parameter names change, so load weights before calling this."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            if isinstance(layer.mlp, MLP):  # experts are stacked already
                layer.mlp.fuse()

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        """input_ids, positions: (T,) int64 flattened over the batch -> hidden (T, hidden_size)."""
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: Tensor, ops: LayerOps | None = None) -> Tensor:
        """(N, hidden) -> (N, vocab) float32, computed in the weights' dtype like transformers.

        `ops`: the engine's; by default those of hidden's device."""
        ops = ops or layer_ops(hidden.device)
        if self.lm_head is not None:
            return ops.linear(hidden, self.lm_head).float()
        if self.packed_head is not None:
            return self.packed_head(hidden).float()
        return ops.matmul(hidden, self.model.embed_tokens.weight).float()
