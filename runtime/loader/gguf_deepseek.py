"""DeepSeek-V3 (and relatives with latent attention) from GGUF: llama.cpp's `deepseek2`.

Names: `attn_q_a` / `attn_q_a_norm` / `attn_q_b` (or `attn_q` without a q LoRA),
`attn_kv_a_mqa`, `attn_kv_a_norm`, `attn_kv_b` (older files) or its halves `attn_k_b`
`(H, kv_lora_rank, qk_nope)` and `attn_v_b` `(H, v_head_dim, kv_lora_rank)` (newer files, for
llama.cpp's absorbed kernels), `ffn_gate_inp` (router), `exp_probs_b` (its correction bias),
`ffn_*_exps` (experts, stacked) and `ffn_*_shexp` (the shared experts); the first
`leading_dense_block_count` layers have a dense `ffn_*`. llama.cpp rotates DeepSeek's
interleaved rope pairs as they are, so no permutation is undone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from runtime.config import ModelConfig
from runtime.config_deepseek import LatentAttention, RouterGating
from runtime.errors import CorruptModelFile, UnsupportedModel

BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm",
    "attn_kv_b": "self_attn.kv_b_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}
_BIAS = re.compile(r"blk\.(\d+)\.exp_probs_b\.bias")
_KV_HALF = re.compile(r"blk\.(\d+)\.attn_(k|v)_b\.weight")
_GATING = {1: "softmax", 2: "sigmoid"}  # llama.cpp's expert_gating_func


def block_name(gguf_name: str) -> str | None:
    """Our name for a deepseek2 block tensor (None for unknown ones and for kv_b's halves)."""
    if m := _BIAS.fullmatch(gguf_name):
        return f"model.layers.{m.group(1)}.mlp.gate.e_score_correction_bias"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    module = BLOCK_NAMES.get(m.group(2)) if m else None
    return None if module is None else f"model.layers.{m.group(1)}.{module}.{m.group(3)}"


def is_kv_half(gguf_name: str) -> bool:
    return _KV_HALF.fullmatch(gguf_name) is not None


class KvBJoiner:
    """Joins `attn_k_b` and `attn_v_b` back into kv_b_proj's weight
    `(H * (qk_nope + v_head_dim), kv_lora_rank)`, then hands it to `assign`."""

    def __init__(self, assign: Callable[[str, torch.Tensor], None]):
        self.assign = assign
        self._halves: dict[int, dict[str, torch.Tensor]] = {}

    def take(self, gguf_name: str, value: torch.Tensor) -> bool:
        m = _KV_HALF.fullmatch(gguf_name)
        if m is None:
            return False
        layer = int(m.group(1))
        halves = self._halves.setdefault(layer, {})
        halves[m.group(2)] = value
        if len(halves) == 2:
            k_b, v_b = halves.pop("k"), halves.pop("v")  # (H, R, Dn), (H, Dv, R)
            kv_b = torch.cat([k_b.transpose(1, 2), v_b], dim=1)  # (H, Dn + Dv, R)
            self.assign(f"model.layers.{layer}.self_attn.kv_b_proj.weight",
                        kv_b.reshape(-1, kv_b.shape[2]).contiguous())
            del self._halves[layer]
        return True

    def check_complete(self, where: object) -> None:
        for layer, halves in self._halves.items():
            have = next(iter(halves))
            raise CorruptModelFile(f"{where} has blk.{layer}.attn_{have}_b.weight but not its "
                                   f"other half; re-download it")


def deepseek2_config(gf, get: Callable[..., Any], base: dict[str, Any]) -> ModelConfig:
    """ModelConfig of a deepseek2 GGUF: `base` holds the fields every architecture has."""
    layers = int(get("block_count"))
    rope = int(get("rope.dimension_count"))
    key = int(_first(get, ("attention.key_length_mla", "attention.key_length")))
    value = int(_first(get, ("attention.value_length_mla", "attention.value_length")))
    q_lora = int(get("attention.q_lora_rank", 0)) or None
    gating = int(get("expert_gating_func", 2))
    if gating not in _GATING:
        raise UnsupportedModel(f"{gf.path}: expert_gating_func {gating} is not supported; "
                               "supported: 1 (softmax), 2 (sigmoid)")
    mla = LatentAttention(q_lora_rank=q_lora, kv_lora_rank=int(get("attention.kv_lora_rank")),
                          qk_nope_head_dim=key - rope, qk_rope_head_dim=rope,
                          v_head_dim=value, rope_interleave=True)
    router = RouterGating(
        scoring=_GATING[gating], n_group=int(get("expert_group_count", 1)) or 1,
        topk_group=int(get("expert_group_used_count", 1)) or 1,
        routed_scaling_factor=float(get("expert_weights_scale", 1.0)),
        n_shared_experts=int(get("expert_shared_count", 1)),
        correction_bias=True,
    )
    dense = int(get("leading_dense_block_count", 0))
    return ModelConfig(
        **base, family="deepseek_v3", num_layers=layers, num_kv_heads=1,
        head_dim=mla.qk_head_dim, intermediate_size=int(get("feed_forward_length")),
        num_experts=int(get("expert_count")), num_experts_per_tok=int(get("expert_used_count")),
        moe_intermediate_size=int(get("expert_feed_forward_length")),
        norm_topk_prob=bool(get("expert_weights_norm", True)),
        mlp_only_layers=tuple(range(min(dense, layers))), mla=mla, router=router,
    )


def _first(get: Callable[..., Any], keys: tuple[str, ...]) -> Any:
    for k in keys[:-1]:
        value = get(k, False)
        if value is not False:
            return value
    return get(keys[-1])
