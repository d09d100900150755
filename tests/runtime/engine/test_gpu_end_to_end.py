"""On the GPU, the model through the Triton kernels matches the model through the reference."""

from __future__ import annotations

import pytest
import torch

from memory.device_pool import DevicePagePool
from memory.kv_layout import KVLayout
from runtime.config import ModelConfig
from runtime.engine.engine import Engine, EngineConfig
from runtime.engine.kv_pages import PrivatePages
from runtime.kernels.backend import create_backend
from runtime.models import build_model

pytestmark = pytest.mark.gpu

CFG = ModelConfig(family="qwen2", vocab_size=1024, hidden_size=512, intermediate_size=1024,
                  num_layers=4, num_heads=8, num_kv_heads=2, head_dim=64, attention_bias=True,
                  max_position_embeddings=8192, rope_theta=1e6)


def engine(model, backend: str) -> Engine:
    layout = KVLayout(CFG.num_layers, CFG.num_kv_heads, CFG.head_dim, 64, torch.bfloat16)
    pool = DevicePagePool(layout, 64, "cuda")
    return Engine(model, PrivatePages(pool), create_backend(backend), device="cuda",
                  max_context=CFG.max_position_embeddings,
                  config=EngineConfig(prefill_chunk=700, max_batch_tokens=700))


def test_triton_logits_match_the_reference():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(CFG).to(torch.bfloat16).eval()
    model.fuse_projections()
    prompt = torch.randint(0, CFG.vocab_size, (1500,)).tolist()
    logits = {}
    for backend in ("torch", "triton"):
        eng = engine(model, backend)
        seq = eng.new_sequence()
        eng.extend(seq, prompt)
        rows = [seq.last_logits]
        for token in prompt[:8]:  # the same tokens for both: each step runs the decode kernel
            eng.extend(seq, [token])
            rows.append(seq.last_logits)
        logits[backend] = torch.stack(rows)
    ref, got = logits["torch"], logits["triton"]
    assert ref.shape == got.shape
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 2e-2 * scale, float((got - ref).abs().max() / scale)
