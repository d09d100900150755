"""On the GPU, the model through the Triton kernels matches the reference and transformers.

Also: programmatic dependent launch changes no bit of the logits (it only reorders launches),
and the batch-1 GEMV agrees with cuBLAS.
"""

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


def prompt_and_steps(eng: Engine, prompt: list[int], steps: int = 8) -> torch.Tensor:
    """Logits after the prompt, then after each of `steps` single-token extends (decode path:
    a CUDA graph replay when the engine has graphs)."""
    seq = eng.new_sequence()
    eng.extend(seq, prompt)
    rows = [seq.last_logits]
    for token in prompt[:steps]:
        eng.extend(seq, [token])
        rows.append(seq.last_logits)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def fused_model():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(CFG).to(torch.bfloat16).eval()
    model.fuse_projections()
    return model


@pytest.mark.parametrize("switch", ["pdl", "gemv"])
def test_decode_features_keep_the_logits(fused_model, switch):
    prompt = torch.randint(0, CFG.vocab_size, (900,), generator=torch.Generator().manual_seed(1))
    on = prompt_and_steps(engine(fused_model, "triton"), prompt.tolist())
    eng = engine(fused_model, "triton")
    eng.runner.set_ops_options(**{"pdl" if switch == "pdl" else "decode_gemv": False})
    off = prompt_and_steps(eng, prompt.tolist())
    if switch == "pdl":  # launch order only: the very same arithmetic
        assert torch.equal(on, off)
    else:  # another summation order than cuBLAS's
        assert (on - off).abs().max() <= 1e-2 * off.abs().max()


def test_as_close_to_fp32_transformers_as_bf16_transformers():
    """Our whole bf16 GPU path (Triton attention, GEMV, graphs, PDL) errs from an fp32
    transformers run no more than transformers itself does in bf16."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    with torch.device("cuda"):
        ours = build_model(CFG).eval()
    hc = transformers.Qwen2Config(
        vocab_size=CFG.vocab_size, hidden_size=CFG.hidden_size,
        intermediate_size=CFG.intermediate_size, num_hidden_layers=CFG.num_layers,
        num_attention_heads=CFG.num_heads, num_key_value_heads=CFG.num_kv_heads,
        max_position_embeddings=CFG.max_position_embeddings, rope_theta=CFG.rope_theta,
        rms_norm_eps=CFG.rms_norm_eps, tie_word_embeddings=False, use_sliding_window=False,
        attn_implementation="sdpa")  # fmt: skip
    hf = transformers.Qwen2ForCausalLM(hc).cuda().eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    ours = ours.to(torch.bfloat16)
    ours.fuse_projections()
    prompt = torch.randint(0, CFG.vocab_size, (1200,), generator=torch.Generator().manual_seed(2))
    steps = 8
    got = prompt_and_steps(engine(ours, "triton"), prompt.tolist(), steps)
    ids = torch.cat([prompt, prompt[:steps]]).unsqueeze(0).cuda()
    with torch.inference_mode():
        ref = hf(input_ids=ids, logits_to_keep=steps + 1).logits[0].float()
        hf_bf16 = hf.to(torch.bfloat16)(input_ids=ids, logits_to_keep=steps + 1).logits[0].float()

    def err(x):
        return float((x - ref).norm() / ref.norm())

    assert err(got) <= 1.5 * err(hf_bf16) + 1e-3, (err(got), err(hf_bf16))
