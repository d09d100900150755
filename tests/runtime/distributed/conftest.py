"""Tiny model folders for the tensor-parallel tests: 8 heads, 4 KV heads (2 and 4 ranks
divide them), a vocabulary 4 ranks split unevenly; Qwen2 (qkv bias), Llama with a tied head,
Qwen3 (q/k norm)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from runtime.config import ModelConfig
from runtime.models import build_model
from tests.model_folder import Shape, write_model_folder

TINY_TP = Shape(layers=2, hidden=64, heads=8, kv_heads=4, head_dim=16, ffn=128, vocab=8203,
                window=4096, rope_theta=1e4)


@pytest.fixture(scope="session")
def qwen2_folder(tmp_path_factory) -> Path:
    return write_model_folder(tmp_path_factory.mktemp("tp") / "qwen2", TINY_TP, device="cpu")


@pytest.fixture(scope="session")
def variant_folder(qwen2_folder, tmp_path_factory):
    """`variant_folder(arch)`: the Qwen2 folder's tokenizer with a random model of `arch`."""

    def make(arch: str, tied: bool) -> Path:
        path = tmp_path_factory.mktemp("tp") / arch
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(qwen2_folder / name, path / name)
        raw = json.loads((qwen2_folder / "config.json").read_text())
        raw.update(architectures=[arch], model_type=arch.removesuffix("ForCausalLM").lower(),
                   tie_word_embeddings=tied)
        (path / "config.json").write_text(json.dumps(raw))
        torch.manual_seed(1)
        model = build_model(ModelConfig.from_hf(raw))
        state = {k: (torch.randn_like(v) * 0.05 if v.dim() > 1 else 1 + 0.1 * torch.randn_like(v))
                 for k, v in model.state_dict().items() if "rotary" not in k}
        if tied:
            state.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
        return path

    return make
