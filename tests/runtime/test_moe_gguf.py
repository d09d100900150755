"""Qwen3-MoE and gpt-oss from GGUF files written under llama.cpp's names, against transformers.

Tensor names come from the `gguf` package's own tables (MODEL_TENSORS of the architecture), so
a name we map wrongly fails here. Experts are written as llama.cpp's converter writes them:
stacked per projection (`ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`, gpt-oss's biases),
gate and up apart; gpt-oss's expert weights in MXFP4 (quantized by `gguf`), the others F32.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.constants import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

from runtime.errors import CorruptModelFile
from runtime.loader import load_model
from tests.runtime.helpers import (
    PagedRunner,
    assert_close_logits,
    hf_greedy,
    hf_logits,
    prompt_ids,
)
from tests.runtime.test_loaders import add_shape_metadata
from tests.runtime.test_moe_models import GPT_OSS, QWEN3_MOE, tiny_moe

pytest.importorskip("transformers")

T = MODEL_TENSOR
# HF module (under model.layers.L.) -> llama.cpp tensor, per architecture.
BLOCK = {
    "input_layernorm": T.ATTN_NORM,
    "self_attn.q_proj": T.ATTN_Q,
    "self_attn.k_proj": T.ATTN_K,
    "self_attn.v_proj": T.ATTN_V,
    "self_attn.o_proj": T.ATTN_OUT,
    "self_attn.q_norm": T.ATTN_Q_NORM,
    "self_attn.k_norm": T.ATTN_K_NORM,
    "mlp.gate_proj": T.FFN_GATE,
    "mlp.up_proj": T.FFN_UP,
    "mlp.down_proj": T.FFN_DOWN,
}
ARCH_BLOCK = {
    MODEL_ARCH.QWEN3MOE: {"post_attention_layernorm": T.FFN_NORM, "mlp.gate": T.FFN_GATE_INP},
    MODEL_ARCH.GPT_OSS: {"post_attention_layernorm": T.ATTN_POST_NORM,
                         "mlp.router": T.FFN_GATE_INP},
}  # fmt: skip
GLOBAL = {"model.embed_tokens": T.TOKEN_EMBD, "model.norm": T.OUTPUT_NORM, "lm_head": T.OUTPUT}


def name_of(arch: MODEL_ARCH, tensor: MODEL_TENSOR, layer: int | None, suffix: str) -> str:
    assert tensor in MODEL_TENSORS[arch], f"{tensor} is not a {arch.name} tensor in gguf"
    return TENSOR_NAMES[tensor].format(bid=layer) + f".{suffix}"


def gguf_tensors(hf, arch: MODEL_ARCH) -> dict[str, np.ndarray]:
    """Every HF parameter under its llama.cpp name; experts split as the converter does."""
    out: dict[str, np.ndarray] = {}
    gpt_oss = arch == MODEL_ARCH.GPT_OSS
    for name, p in hf.state_dict().items():
        w = p.float().numpy()
        if name.rsplit(".", 1)[0] in GLOBAL:
            out[name_of(arch, GLOBAL[name.rsplit(".", 1)[0]], None, "weight")] = w
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(\w+)", name)
        layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
        if module == "self_attn" and kind == "sinks":
            out[name_of(arch, T.ATTN_SINKS, layer, "weight")] = w
        elif module == "mlp.experts":
            out.update(_experts(arch, layer, kind, w, gpt_oss))
        else:
            tensor = {**BLOCK, **ARCH_BLOCK[arch]}[module]
            out[name_of(arch, tensor, layer, kind)] = w
    return out


def _experts(arch, layer: int, kind: str, w: np.ndarray, gpt_oss: bool) -> dict[str, np.ndarray]:
    gate, up, down = T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP
    if kind == "gate_up_proj":
        if gpt_oss:  # (E, H, 2F), columns interleaved -> (E, F, H) each
            g, u = w[..., 0::2].transpose(0, 2, 1), w[..., 1::2].transpose(0, 2, 1)
        else:  # (E, 2F, H) = [gate | up]
            g, u = np.split(w, 2, axis=1)
        return {name_of(arch, gate, layer, "weight"): g, name_of(arch, up, layer, "weight"): u}
    if kind == "gate_up_proj_bias":
        return {name_of(arch, gate, layer, "bias"): w[:, 0::2],
                name_of(arch, up, layer, "bias"): w[:, 1::2]}  # fmt: skip
    if kind == "down_proj":
        return {name_of(arch, down, layer, "weight"): w.transpose(0, 2, 1) if gpt_oss else w}
    assert kind == "down_proj_bias", kind
    return {name_of(arch, down, layer, "bias"): w}


def write_moe_gguf(path: Path, hf, arch: MODEL_ARCH, tensors: dict[str, np.ndarray],
                   quantize_experts: bool) -> dict[str, np.ndarray]:
    """Write the file; returns the fp32 values each tensor dequantizes to."""
    cfg = hf.config
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    add_shape_metadata(w, cfg)
    w.add_expert_count(getattr(cfg, "num_experts", None) or cfg.num_local_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_feed_forward_length(getattr(cfg, "moe_intermediate_size", cfg.intermediate_size))
    if arch == MODEL_ARCH.GPT_OSS:
        rope = cfg.rope_parameters
        w.add_sliding_window(cfg.sliding_window)
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    else:
        w.add_expert_weights_norm(cfg.norm_topk_prob)
    values = {}
    for name, value in tensors.items():
        value = np.ascontiguousarray(value, dtype=np.float32)
        if quantize_experts and "_exps.weight" in name:
            data = gguf.quants.quantize(value, Q.MXFP4)
            w.add_tensor(name, data, raw_dtype=Q.MXFP4)
            values[name] = gguf.quants.dequantize(data, Q.MXFP4).reshape(value.shape)
        else:
            w.add_tensor(name, value)
            values[name] = value
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


def _hf_with(hf, arch: MODEL_ARCH, values: dict[str, np.ndarray]) -> None:
    """Give transformers the dequantized expert weights (inverse of `_experts`)."""
    gpt_oss = arch == MODEL_ARCH.GPT_OSS
    state = {}
    for layer, block in enumerate(hf.model.layers):
        if not hasattr(block.mlp, "experts"):
            continue
        g = values[name_of(arch, T.FFN_GATE_EXP, layer, "weight")]
        u = values[name_of(arch, T.FFN_UP_EXP, layer, "weight")]
        d = values[name_of(arch, T.FFN_DOWN_EXP, layer, "weight")]
        prefix = f"model.layers.{layer}.mlp.experts"
        if gpt_oss:
            gate_up = np.empty((g.shape[0], g.shape[2], 2 * g.shape[1]), np.float32)
            gate_up[..., 0::2], gate_up[..., 1::2] = g.transpose(0, 2, 1), u.transpose(0, 2, 1)
            d = d.transpose(0, 2, 1)
        else:
            gate_up = np.concatenate([g, u], axis=1)
        state[f"{prefix}.gate_up_proj"] = torch.from_numpy(gate_up)
        state[f"{prefix}.down_proj"] = torch.from_numpy(np.ascontiguousarray(d))
    hf.load_state_dict(state, strict=False)


CASES = [
    # llama.cpp's qwen3moe has no dense layers among the sparse ones
    ("qwen3moe-f32", "Qwen3MoeConfig", MODEL_ARCH.QWEN3MOE, {**QWEN3_MOE, "mlp_only_layers": []},
     False),
    ("gpt-oss-mxfp4", "GptOssConfig", MODEL_ARCH.GPT_OSS, GPT_OSS, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_moe_gguf_matches_transformers(case, tmp_path):
    _, cls_name, arch, extra, quantize = case
    hf = tiny_moe(cls_name, 2, extra)
    path = tmp_path / "tiny.gguf"
    _hf_with(hf, arch, write_moe_gguf(path, hf, arch, gguf_tensors(hf, arch), quantize))
    loaded = load_model(path)
    assert loaded.config.family == {MODEL_ARCH.QWEN3MOE: "qwen3_moe"}.get(arch, "gpt_oss")
    ids = prompt_ids(256, 50)
    ours = PagedRunner(loaded.model, loaded.config).prefill(ids, [9, 17])
    assert_close_logits(ours, hf_logits(hf, ids))
    assert PagedRunner(loaded.model, loaded.config).greedy(ids, 24, [20]) == hf_greedy(hf, ids, 24)


def test_missing_gguf_expert_tensor_is_named(tmp_path):
    hf = tiny_moe("Qwen3MoeConfig", 2, {**QWEN3_MOE, "mlp_only_layers": []})
    tensors = gguf_tensors(hf, MODEL_ARCH.QWEN3MOE)
    del tensors["blk.2.ffn_up_exps.weight"]
    write_moe_gguf(tmp_path / "t.gguf", hf, MODEL_ARCH.QWEN3MOE, tensors, False)
    with pytest.raises(CorruptModelFile, match=r"expert tensor blk\.2\.ffn_up_exps\.weight"):
        load_model(tmp_path / "t.gguf")
