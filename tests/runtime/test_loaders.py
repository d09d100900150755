"""Loaders: GGUF files written like llama.cpp's converter, HF folder details, and bad input.

The GGUF round trips take a tiny transformers model, quantize its weights (F32, F16, Q8_0, Q4_1),
write them under llama.cpp names with its q/k permutation and metadata, and compare our model
loaded from the file against transformers holding the same (dequantized) weights.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file, save_file

from runtime.errors import CorruptModelFile, ModelNotFound, UnsupportedModel
from runtime.loader import load_model
from runtime.loader.common import weights_id
from tests.runtime.helpers import (
    PagedRunner,
    assert_close_logits,
    hf_greedy,
    hf_logits,
    prompt_ids,
    tiny_hf_model,
)

pytest.importorskip("transformers")

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
DEFAULT = {"rope_type": "default"}

GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


# --- GGUF written like convert_hf_to_gguf.py -----------------------------------------------------


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_GLOBAL:
        return GGUF_GLOBAL[hf_name]
    layer, module, kind = re.fullmatch(
        r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name
    ).groups()
    return f"blk.{layer}.{GGUF_BLOCK[module]}.{kind}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute: interleave the rotary halves of each head."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_rope_freqs(cfg) -> np.ndarray:
    """convert_hf_to_gguf's llama3 `rope_freqs` tensor: one divisor per rotary frequency."""
    p = cfg.rope_parameters
    dim = cfg.head_dim
    freqs = 1.0 / (p["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    old, low, high = (
        p["original_max_position_embeddings"],
        p["low_freq_factor"],
        p["high_freq_factor"],
    )
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(p["factor"])
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def quantized(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(bytes to store, the fp32 values they dequantize to)."""
    if qtype == Q.F32:
        return w, w
    if qtype == Q.F16:
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    data = gguf.quants.quantize(w, qtype)
    return data, gguf.quants.dequantize(data, qtype)


def add_shape_metadata(w: gguf.GGUFWriter, cfg) -> None:
    """The metadata every llama.cpp architecture has: sizes, heads, rope base, norm eps."""
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)


def write_gguf(path: Path, hf, arch: str, qtype: Q, rope: dict) -> None:
    """Write `hf` as llama.cpp would; `hf`'s weights become the dequantized values (in place)."""
    cfg = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    add_shape_metadata(w, cfg)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_eot_token_id(5)
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])  # exercises string arrays
    if rope["rope_type"] == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if rope["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(cfg))
    _add_tensors(w, hf, arch, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_tensors(w: gguf.GGUFWriter, hf, arch: str, qtype: Q) -> None:
    cfg = hf.config
    with torch.no_grad():
        for name, p in hf.named_parameters():
            value = p.numpy().copy()
            # llama.cpp keeps 1-D tensors (norms, biases) in F32.
            stored, deq = quantized(value, qtype if value.ndim == 2 else Q.F32)
            p.copy_(torch.from_numpy(np.asarray(deq).reshape(value.shape)))
            heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
            module = name.split(".")[-2]
            if arch == "llama" and module in heads:
                stored = llama_cpp_permute(stored, heads[module])  # rows permute with blocks
            raw = {} if qtype in (Q.F32, Q.F16) or value.ndim == 1 else {"raw_dtype": qtype}
            w.add_tensor(gguf_name(name), stored, **raw)


GGUF_CASES = [
    # id, HF config class, gguf arch, tensor type, rope, gqa, tied, greedy too
    ("llama-f32-llama3-rope-freqs", "LlamaConfig", "llama", Q.F32, LLAMA3, 2, False, False),
    ("llama-q8_0-tied", "LlamaConfig", "llama", Q.Q8_0, DEFAULT, 4, True, True),
    ("qwen2-f16-yarn", "Qwen2Config", "qwen2", Q.F16, YARN, 4, True, True),
    ("qwen3-q4_1", "Qwen3Config", "qwen3", Q.Q4_1, DEFAULT, 1, False, True),
]


@pytest.mark.parametrize("case", GGUF_CASES, ids=[c[0] for c in GGUF_CASES])
def test_gguf_round_trip_matches_transformers(case, tmp_path):
    _, cls_name, arch, qtype, rope, gqa, tied, greedy = case
    hf = tiny_hf_model(cls_name, rope, gqa, tied, {})
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf, arch, qtype, rope)
    loaded = load_model(path)
    assert loaded.config.head_dim == 16 and loaded.config.tie_word_embeddings == tied
    assert loaded.generation_eos_ids == (2, 5)
    ids = prompt_ids(256, 70)
    ours = PagedRunner(loaded.model, loaded.config).prefill(ids, [9, 30])
    assert_close_logits(ours, hf_logits(hf, ids))
    if greedy:  # with rope_freqs inv_freq differs from HF's llama3 one by rounding: logits only
        runner = PagedRunner(loaded.model, loaded.config)
        assert runner.greedy(ids, 32, [40]) == hf_greedy(hf, ids, 32)


# --- HF folders ---------------------------------------------------------------------------------


@pytest.fixture
def hf_folder(tmp_path) -> Path:
    hf = tiny_hf_model("LlamaConfig", DEFAULT, 2, False, {})
    hf.config.eos_token_id = 2
    hf.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    return tmp_path / "m"


def test_hf_folder_metadata_and_dtype(hf_folder):
    loaded = load_model(hf_folder, dtype=torch.bfloat16)
    assert loaded.generation_eos_ids == (2, 7)  # config eos first, then generation_config's
    assert loaded.dtype == torch.bfloat16 and loaded.path == hf_folder
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in loaded.model.parameters())
    full = load_model(hf_folder)
    ids = prompt_ids(256, 20)
    half = PagedRunner(loaded.model, loaded.config, dtype=torch.bfloat16).prefill(ids, [])
    ref = PagedRunner(full.model, full.config).prefill(ids, [])
    assert_close_logits(half, ref, rel=0.05)


def test_weights_id_is_content_derived(hf_folder, tmp_path):
    first = load_model(hf_folder).weights_id
    copy = shutil.copytree(hf_folder, tmp_path / "copy")
    assert load_model(copy).weights_id == first  # same bytes elsewhere: same id
    state = load_file(copy / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"] + 1
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    assert weights_id([copy / "model.safetensors"]) != weights_id([hf_folder / "model.safetensors"])
    assert load_model(copy).weights_id != first


def test_folder_with_one_gguf_loads_it(tmp_path):
    hf = tiny_hf_model("LlamaConfig", DEFAULT, 1, True, {})
    write_gguf(tmp_path / "only.gguf", hf, "llama", Q.F32, DEFAULT)
    assert load_model(tmp_path).path == tmp_path / "only.gguf"


# --- bad input ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFound) as e:
        load_model(tmp_path / "nope")
    assert "agent models pull" in one_line(e) and "nope" in one_line(e)
    with pytest.raises(ModelNotFound) as e:
        load_model(tmp_path)  # a folder holding no model
    one_line(e)


def test_unsupported_architecture(hf_folder):
    cfg = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(
        json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(UnsupportedModel) as e:
        load_model(hf_folder)
    assert "GPT2LMHeadModel" in one_line(e) and "LlamaForCausalLM" in one_line(e)


@pytest.mark.parametrize(
    "option", [{"mlp_bias": True}, {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}]
)
def test_unsupported_options(hf_folder, option):
    cfg = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**cfg, **option}))
    with pytest.raises(UnsupportedModel) as e:
        load_model(hf_folder)
    one_line(e)


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_truncated_safetensors(hf_folder, keep):
    file = hf_folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptModelFile) as e:
        load_model(hf_folder)
    assert "model.safetensors" in one_line(e)


def test_missing_and_unexpected_tensors(hf_folder):
    file = hf_folder / "model.safetensors"
    state = load_file(file)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, file, metadata={"format": "pt"})
    with pytest.raises(CorruptModelFile) as e:
        load_model(hf_folder)
    assert "model.layers.1.mlp.up_proj.weight" in one_line(e)
    state["model.layers.0.mlp.up_proj.bias"] = torch.zeros(96)
    save_file(state, file, metadata={"format": "pt"})
    with pytest.raises(UnsupportedModel) as e:
        load_model(hf_folder)
    assert "up_proj.bias" in one_line(e)


def test_missing_shard(tmp_path):
    hf = tiny_hf_model("Qwen2Config", DEFAULT, 2, True, {})
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    shards[-1].unlink()
    with pytest.raises(CorruptModelFile) as e:
        load_model(tmp_path)
    assert shards[-1].name in one_line(e)


def test_pickle_only_folder(hf_folder):
    (hf_folder / "model.safetensors").rename(hf_folder / "pytorch_model.bin")
    with pytest.raises(UnsupportedModel) as e:
        load_model(hf_folder)
    one_line(e)


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    hf = tiny_hf_model("LlamaConfig", DEFAULT, 2, False, {})
    write_gguf(tmp_path / "tiny.gguf", hf, "llama", Q.Q8_0, DEFAULT)
    return tmp_path / "tiny.gguf"


@pytest.mark.parametrize("keep", [0.9, 0.01, 0.0])
def test_truncated_gguf(tiny_gguf, keep):
    data = tiny_gguf.read_bytes()
    tiny_gguf.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptModelFile) as e:
        load_model(tiny_gguf)
    assert "tiny.gguf" in one_line(e)


def test_garbage_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CorruptModelFile) as e:
        load_model(path)
    assert "junk.gguf" in one_line(e)
    path.write_bytes(b"GGUF" + np.random.default_rng(1).bytes(4096))  # right magic, junk after
    with pytest.raises((CorruptModelFile, UnsupportedModel)) as e:
        load_model(path)
    one_line(e)


def test_unsupported_gguf_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModel) as e:
        load_model(tmp_path / "gpt2.gguf")
    assert "gpt2" in one_line(e) and "llama" in one_line(e)
