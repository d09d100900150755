"""DeepSeek-V3 from GGUF files under llama.cpp's `deepseek2` names, against transformers.

Names come from the `gguf` package's own tables (MODEL_TENSORS[DEEPSEEK2]), metadata from its
writer's keys; kv_b is written whole (older converters) or as llama.cpp's `attn_k_b` /
`attn_v_b` halves (newer ones); experts stacked per projection, the shared experts apart.
"""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
from gguf.constants import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

from runtime.errors import CorruptModelFile
from runtime.loader import load_model
from tests.runtime.helpers import PagedRunner, assert_close_logits, hf_greedy, hf_logits, prompt_ids
from tests.runtime.test_loaders import add_shape_metadata
from tests.runtime.test_mla_models import CASES, tiny_mla

T, ARCH = MODEL_TENSOR, MODEL_ARCH.DEEPSEEK2
BLOCK = {
    "input_layernorm": T.ATTN_NORM, "post_attention_layernorm": T.FFN_NORM,
    "self_attn.q_a_proj": T.ATTN_Q_A, "self_attn.q_a_layernorm": T.ATTN_Q_A_NORM,
    "self_attn.q_b_proj": T.ATTN_Q_B, "self_attn.kv_a_proj_with_mqa": T.ATTN_KV_A_MQA,
    "self_attn.kv_a_layernorm": T.ATTN_KV_A_NORM, "self_attn.kv_b_proj": T.ATTN_KV_B,
    "self_attn.o_proj": T.ATTN_OUT, "mlp.gate": T.FFN_GATE_INP,
    "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP, "mlp.down_proj": T.FFN_DOWN,
    "mlp.shared_experts.gate_proj": T.FFN_GATE_SHEXP,
    "mlp.shared_experts.up_proj": T.FFN_UP_SHEXP,
    "mlp.shared_experts.down_proj": T.FFN_DOWN_SHEXP,
}  # fmt: skip
GLOBAL = {"model.embed_tokens": T.TOKEN_EMBD, "model.norm": T.OUTPUT_NORM, "lm_head": T.OUTPUT}


def name_of(tensor: MODEL_TENSOR, layer: int | None, suffix: str) -> str:
    assert tensor in MODEL_TENSORS[ARCH], f"{tensor} is not a deepseek2 tensor in gguf"
    return TENSOR_NAMES[tensor].format(bid=layer) + f".{suffix}"


def gguf_tensors(hf, split_kv_b: bool) -> dict[str, np.ndarray]:
    cfg, out = hf.config, {}
    for name, p in hf.state_dict().items():
        w = p.float().numpy()
        module, _, kind = name.rpartition(".")
        if module in GLOBAL:
            out[name_of(GLOBAL[module], None, kind)] = w
            continue
        layer, module = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module).groups()
        layer = int(layer)
        if kind == "e_score_correction_bias":
            out[name_of(T.FFN_EXP_PROBS_B, layer, "bias")] = w
        elif module == "mlp.experts":
            if kind == "gate_up_proj":
                g, u = np.split(w, 2, axis=1)
                out[name_of(T.FFN_GATE_EXP, layer, "weight")] = g
                out[name_of(T.FFN_UP_EXP, layer, "weight")] = u
            else:
                out[name_of(T.FFN_DOWN_EXP, layer, "weight")] = w
        elif module == "self_attn.kv_b_proj" and split_kv_b:  # as llama.cpp's converter does
            kv_b = w.reshape(cfg.num_attention_heads, -1, w.shape[1])
            k_b, v_b = kv_b[:, : cfg.qk_nope_head_dim], kv_b[:, cfg.qk_nope_head_dim :]
            out[name_of(T.ATTN_K_B, layer, "weight")] = k_b.transpose(0, 2, 1)
            out[name_of(T.ATTN_V_B, layer, "weight")] = v_b
        else:
            out[name_of(BLOCK[module], layer, kind)] = w
    return out


def write(path, hf, tensors) -> None:
    cfg = hf.config
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[ARCH])
    add_shape_metadata(w, cfg)
    w.add_q_lora_rank(cfg.q_lora_rank)
    w.add_kv_lora_rank(cfg.kv_lora_rank)
    w.add_key_length_mla(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    w.add_value_length_mla(cfg.v_head_dim)
    w.add_rope_dimension_count(cfg.qk_rope_head_dim)
    w.add_leading_dense_block_count(cfg.first_k_dense_replace)
    w.add_expert_count(cfg.n_routed_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_shared_count(cfg.n_shared_experts)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    w.add_expert_weights_norm(cfg.norm_topk_prob)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_expert_group_count(cfg.n_group)
    w.add_expert_group_used_count(cfg.topk_group)
    for name, value in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def hf():
    return tiny_mla(CASES[0][1], CASES[0][2])  # group-limited routing, a dense first layer


@pytest.mark.parametrize("split_kv_b", [False, True], ids=["kv_b", "k_b+v_b"])
def test_deepseek2_gguf_matches_transformers(hf, tmp_path, split_kv_b):
    path = tmp_path / "tiny.gguf"
    write(path, hf, gguf_tensors(hf, split_kv_b))
    loaded = load_model(path)
    assert loaded.config.family == "deepseek_v3" and loaded.config.mla.qk_nope_head_dim == 16
    ids = prompt_ids(256, 50)
    assert_close_logits(PagedRunner(loaded.model, loaded.config).prefill(ids, [9, 17]),
                        hf_logits(hf, ids))
    assert PagedRunner(loaded.model, loaded.config).greedy(ids, 16, [20]) == hf_greedy(hf, ids, 16)


def test_a_missing_kv_b_half_is_named(hf, tmp_path):
    tensors = gguf_tensors(hf, True)
    del tensors["blk.1.attn_v_b.weight"]
    write(tmp_path / "t.gguf", hf, tensors)
    with pytest.raises(CorruptModelFile, match=r"blk\.1\.attn_k_b\.weight but not its other"):
        load_model(tmp_path / "t.gguf")

