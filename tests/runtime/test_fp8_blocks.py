"""Block-scaled fp8 checkpoints as DeepSeek ships them, dequantized at load.

A tiny DeepSeek-V3 checkpoint whose projections (attention, dense and shared MLPs, every
expert) are float8 e4m3 with fp32 `weight_scale_inv` per 16 x 16 tile (partial tiles at the
edges), and a DeepSeek-V4 one with DeepSeek's `W.scale` companions in e8m0: our model loaded
from them matches transformers holding the dequantized weights.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime.errors import CorruptModelFile, UnsupportedModel
from runtime.loader import load_model
from tests.runtime.helpers import PagedRunner, assert_close_logits, hf_logits, prompt_ids
from tests.runtime.test_deepseek_v4 import CASES as V4_CASES
from tests.runtime.test_deepseek_v4 import tiny_v4
from tests.runtime.test_mla_models import CASES, tiny_mla

BLOCK = (16, 16)


def quantize(w: torch.Tensor, e8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 values and one scale per BLOCK tile (power-of-two scales when `e8m0`)."""
    rows, cols = w.shape
    r, c = -(-rows // BLOCK[0]), -(-cols // BLOCK[1])
    padded = torch.zeros(r * BLOCK[0], c * BLOCK[1])
    padded[:rows, :cols] = w
    tiles = padded.view(r, BLOCK[0], c, BLOCK[1]).abs().amax(dim=(1, 3)).clamp(min=1e-8) / 448
    if e8m0:
        tiles = torch.exp2(torch.ceil(torch.log2(tiles)))
    full = tiles.repeat_interleave(BLOCK[0], 0)[:rows].repeat_interleave(BLOCK[1], 1)[:, :cols]
    q = (w / full).to(torch.float8_e4m3fn)
    return q, (tiles.to(torch.float8_e8m0fnu) if e8m0 else tiles), q.float() * full


def fp8_checkpoint(hf, path, quantized, scale_name, e8m0: bool) -> dict[str, torch.Tensor]:
    """Rewrite the saved checkpoint with `quantized(name)` tensors in fp8; returns the
    dequantized values by stored name."""
    hf.save_pretrained(path)
    state = load_file(path / "model.safetensors")
    dense = {}
    for name in [n for n in state if quantized(n)]:
        q, s, dense[name] = quantize(state[name].float(), e8m0)
        state[name], state[scale_name(name)] = q, s
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                     "weight_block_size": list(BLOCK)}
    (path / "config.json").write_text(json.dumps(config))
    return dense


def _v3_quantized(name: str) -> bool:
    return name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight")


def sync_transformers(hf, model) -> None:
    """Give transformers our loaded weights (its stacked experts are named `*_proj`)."""
    ours = dict(model.named_parameters())
    state = hf.state_dict()
    for name in state:
        mine = re.sub(r"\.experts\.(gate_up|down)_proj$", r".experts.\1", name)
        if mine in ours:
            state[name] = ours[mine].detach().clone()
    hf.load_state_dict(state)


def test_deepseek_v3_fp8_checkpoint_matches_dequantized_transformers(tmp_path):
    hf = tiny_mla(CASES[0][1], CASES[0][2])
    dense = fp8_checkpoint(hf, tmp_path, _v3_quantized, lambda n: n + "_scale_inv", False)
    assert any(".experts.3." in n for n in dense) and len(dense) > 30
    loaded = load_model(tmp_path, dtype=torch.float32)
    params = dict(loaded.model.named_parameters())
    attn = "model.layers.1.self_attn.kv_b_proj.weight"
    assert torch.equal(params[attn], dense[attn])
    gate = params["model.layers.2.mlp.experts.gate_up"][3, :32]
    assert torch.equal(gate, dense["model.layers.2.mlp.experts.3.gate_proj.weight"])
    sync_transformers(hf, loaded.model)
    ids = prompt_ids(256, 40, seed=7)
    ours = PagedRunner(loaded.model, loaded.config).prefill(ids, [13])
    assert_close_logits(ours, hf_logits(hf, ids))


def test_deepseek_v4_fp8_with_e8m0_scales(tmp_path):
    hf = tiny_v4(V4_CASES[0][1])

    def quantized(name: str) -> bool:
        return any(f".{w}.weight" in name for w in ("wq_a", "wq_b", "wkv", "wo_b", "w1", "w3"))

    dense = fp8_checkpoint(hf, tmp_path, quantized, lambda n: n.removesuffix(".weight") +
                           ".scale", True)
    loaded = load_model(tmp_path, dtype=torch.float32)
    params = dict(loaded.model.named_parameters())
    assert torch.equal(params["model.layers.1.self_attn.q_a_proj.weight"],
                       dense["model.layers.1.attn.wq_a.weight"])
    assert torch.equal(params["model.layers.3.mlp.experts.gate_up"][5, 32:],
                       dense["model.layers.3.ffn.experts.5.w3.weight"])
    sync_transformers(hf, loaded.model)
    ids = prompt_ids(256, 40, seed=8)
    assert_close_logits(PagedRunner(loaded.model, loaded.config).prefill(ids, [9]),
                        hf_logits(hf, ids))


def test_bad_block_scales_are_one_line(tmp_path):
    hf = tiny_mla(CASES[0][1], CASES[0][2])
    fp8_checkpoint(hf, tmp_path, _v3_quantized, lambda n: n + "_scale_inv", False)
    state = load_file(tmp_path / "model.safetensors")
    name = "model.layers.0.self_attn.o_proj.weight_scale_inv"
    state[name] = state[name][:1]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorruptModelFile, match="o_proj.weight has block scales of shape") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_fp4_experts_are_refused_in_one_line(tmp_path):
    tiny_v4(V4_CASES[0][1]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "expert_dtype": "fp4"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="fp4 experts"):
        load_model(tmp_path)
