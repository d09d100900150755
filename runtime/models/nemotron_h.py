"""Nemotron-H (`NemotronHForCausalLM`): a stack of single-mixer blocks, each `x + mixer(norm(x))`
with the mixer one of Mamba-2 (mamba2.py), attention without positional encoding, or a
squared-ReLU MLP, in the order the config's `layers_block_type` (or the older
`hybrid_override_pattern`) gives. RMSNorm multiplies by its weight in fp32.

Parameter names equal the checkpoints' (transformers saves them so): `backbone.embeddings`,
`backbone.layers.L.mixer.*`, `backbone.norm_f`, `lm_head`. The routed-experts blocks (`moe`)
are not served yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.config import FULL, LINEAR, ModelConfig
from runtime.forward_context import ForwardContext
from runtime.kernels.layer_ops import LayerOps, layer_ops
from runtime.models.llama import RMSNorm
from runtime.models.mamba2 import Mamba2Mixer
from runtime.models.recurrent_state import RecurrentStatePool, StateShape


class NoRopeAttention(nn.Module):
    """GQA attention over the paged cache; no rotary embedding, no q/k norm."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hq, self.hkv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.hq * self.d, bias=bias)
        self.k_proj = nn.Linear(h, self.hkv * self.d, bias=bias)
        self.v_proj = nn.Linear(h, self.hkv * self.d, bias=bias)
        self.o_proj = nn.Linear(self.hq * self.d, h, bias=bias)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        t, lin = x.shape[0], ctx.ops.linear
        q = lin(x, self.q_proj).view(t, self.hq, self.d)
        k = lin(x, self.k_proj).view(t, self.hkv, self.d)
        v = lin(x, self.v_proj).view(t, self.hkv, self.d)
        out = ctx.attend(self.layer_idx, q, k, v, self.scale)  # (T, Hq, D)
        return lin(out.reshape(t, self.hq * self.d), self.o_proj)


class ReluSquaredMLP(nn.Module):
    """down(relu(up(x))^2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        return ctx.ops.linear(F.relu(ctx.ops.linear(x, self.up_proj)).square(), self.down_proj)


class NemotronHBlock(nn.Module):
    """`x + mixer(norm(x))` for the block's one mixer."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, weight_in_fp32=True)
        kind = cfg.layer_types[layer_idx]
        mixers = {LINEAR: Mamba2Mixer, FULL: NoRopeAttention}
        self.mixer = mixers[kind](cfg, layer_idx) if kind in mixers else ReluSquaredMLP(cfg)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        return x + self.mixer(self.norm(x), ctx)


class NemotronHModel(nn.Module):
    """Embeddings, blocks and the final norm (the checkpoints' `backbone.` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(NemotronHBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, weight_in_fp32=True)

    def forward(self, input_ids: Tensor, ctx: ForwardContext) -> Tensor:
        assert ctx.states is not None, "hybrid models need recurrent-state slots in ctx.states"
        x = self.embeddings(input_ids)  # (T, hidden)
        for layer in self.layers:
            x = layer(x, ctx)
        ctx.states.finish()
        return self.norm_f(x)


class NemotronHForCausalLM(nn.Module):
    """The whole model; `new_state_pool` gives the Mamba layers' state slots."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.backbone = NemotronHModel(cfg)  # the checkpoints' prefix
        self.lm_head: nn.Linear | None = None
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: Tensor, positions: Tensor, ctx: ForwardContext) -> Tensor:
        """input_ids, positions `(T,)` -> hidden `(T, hidden_size)` (positions unused)."""
        return self.backbone(input_ids, ctx)

    def compute_logits(self, hidden: Tensor, ops: LayerOps | None = None) -> Tensor:
        """(N, hidden) -> (N, vocab) float32."""
        ops = ops or layer_ops(hidden.device)
        if self.lm_head is None:
            return ops.matmul(hidden, self.backbone.embeddings.weight).float()
        return ops.linear(hidden, self.lm_head).float()

    def state_shapes(self) -> dict[int, StateShape]:
        return {i: layer.mixer.state_shape() for i, layer in enumerate(self.backbone.layers)
                if isinstance(layer.mixer, Mamba2Mixer)}

    def new_state_pool(self, num_slots: int, device: torch.device | str = "cpu"
                       ) -> RecurrentStatePool:
        dtype = self.backbone.embeddings.weight.dtype
        return RecurrentStatePool(self.state_shapes(), num_slots, dtype, device)

    def fuse_projections(self) -> None:
        """Nothing to fuse: every projection is one matmul already."""
