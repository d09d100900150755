"""One causal LM for the Llama family: Llama / Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

Parameter names equal Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`),
so a HF state dict loads as it is. Tokens of every sequence in a batch are flattened into one
dimension T; attention over the paged KV cache goes through `ForwardContext.attend`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import ModelConfig
from runtime.forward_context import ForwardContext
from runtime.rope import RotaryEmbedding, apply_rotary

# Batch-1 projections on CUDA through the streaming GEMV (runtime/kernels/triton_linear.py);
# False falls back to cuBLAS (for A/B runs; set before CUDA graphs are captured).
DECODE_GEMV = True


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, exactly as transformers does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        # One fused kernel for x * rsqrt(mean(x^2) + eps), in fp32 like transformers.
        x = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * x.to(dtype)

    def add_norm(self, x: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        """`(norm(residual + x), residual + x)`; with no residual yet, `(norm(x), x)`.

        On CUDA one fused kernel does both (runtime/kernels/triton_norm.py)."""
        if x.is_cuda and x.dim() == 2:
            from runtime.kernels.triton_norm import add_rmsnorm

            return add_rmsnorm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = residual + x
        return self(x), x


class Attention(nn.Module):
    """GQA self-attention with rotary embeddings; K/V go to the paged cache via the context."""

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
        self.qkv_proj: nn.Linear | None = None

    def fuse(self) -> None:
        """Serve q, k and v from one matmul (fewer, larger GEMMs); after loading only."""
        self.qkv_proj = _fused([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: ForwardContext) -> Tensor:
        t, hq, hkv, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            qkv = _project(self.qkv_proj, x)
            if x.is_cuda and not self.qk_norm:
                # q and k are adjacent in each row: rotate both heads' sets in one launch.
                _rotate(qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d), cos, sin)
                cos = sin = None
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.reshape(t, hq, d), k.reshape(t, hkv, d), v.reshape(t, hkv, d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = ctx.attend(self.layer_idx, q, k, v, self.scale)  # (T, Hq, D)
        return _project(self.o_proj, out.reshape(t, hq * d))  # (T, hidden)


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
        self.gate_up_proj = _fused([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate_up = _project(self.gate_up_proj, x)
        if x.is_cuda:  # Triton kernels, imported lazily (kernels/conftest.py says why)
            from runtime.kernels.triton_linear import gemv, silu_mul

            if _use_gemv(x):
                return gemv(gate_up, self.down_proj.weight, act="silu_mul")
            return self.down_proj(silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _use_gemv(x: Tensor) -> bool:
    return DECODE_GEMV and x.is_cuda and x.shape[0] == 1


def _project(linear: nn.Module, x: Tensor) -> Tensor:
    """`linear(x)`; one row on CUDA streams the weight through the GEMV kernel. Off that path
    the module itself runs (on CPU it may be a OneDnnLinear holding packed weights)."""
    if _use_gemv(x):
        return _matmul(x, linear.weight, linear.bias)
    return linear(x)


def _matmul(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if _use_gemv(x):
        from runtime.kernels.triton_linear import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE: in place by one Triton kernel on CUDA, by torch ops elsewhere."""
    if x.is_cuda:
        from runtime.kernels.triton_norm import rope_

        return rope_(x, cos, sin)
    return apply_rotary(x, cos, sin)


def _fused(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the concatenation of `linears`' outputs."""
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
    norm (fused on CUDA)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, residual: Tensor | None, cos: Tensor, sin: Tensor,
                ctx: ForwardContext) -> tuple[Tensor, Tensor]:
        """The residual stream travels beside the block's output, so each norm can add it."""
        h, residual = self.input_layernorm.add_norm(x, residual)
        h = self.self_attn(h, cos, sin, ctx)
        h, residual = self.post_attention_layernorm.add_norm(h, residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    """Embedding, decoder layers and the final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:  # normal_ on meta imports torch._dynamo: ~1 s per process
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg)

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        # Every position is below the longest sequence's length: a host int, so no device sync.
        cos, sin = self.rotary(positions, ctx.meta.max_seq_len)  # (T, D/2) each
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, ctx)
        return self.norm.add_norm(x, residual)[0]


class CausalLM(nn.Module):
    """The whole model; `lm_head` is absent when the embeddings are tied."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.lm_head: nn.Linear | None = None
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # A tied head laid out for the matmul (runtime/engine/cpu_layout.py), when one is made.
        self.packed_head: nn.Module | None = None

    def fuse_projections(self) -> None:
        """q/k/v and gate/up as single matmuls, layer by layer (one extra matrix at a time).

        For serving only: parameter names change, so load weights before calling this."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        """input_ids, positions: (T,) int64 flattened over the batch -> hidden (T, hidden_size)."""
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """(N, hidden) -> (N, vocab) float32, computed in the weights' dtype like transformers."""
        if self.lm_head is not None:
            return _project(self.lm_head, hidden).float()
        if self.packed_head is not None:
            return self.packed_head(hidden).float()
        return _matmul(hidden, self.model.embed_tokens.weight).float()
