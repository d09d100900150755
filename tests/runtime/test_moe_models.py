"""The MoE families against transformers on the same weights, loaded from disk by our loader.

Tiny random Qwen3-MoE (renormalised and raw top-k, a dense layer among sparse ones) and gpt-oss
(sinks, an 8-token sliding window on alternate layers, biased experts, clamped SwiGLU, yarn)
checkpoints, saved as transformers writes them; gpt-oss also as an MXFP4 checkpoint. Chunked
prefill with uneven chunks across 16-token pages (chunks of one to twenty tokens, past the
window) must give fp32 logits within 1e-4 of the logit scale at every position; greedy 64
tokens must be identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime.errors import CorruptModelFile, UnsupportedModel
from runtime.loader import load_model
from tests.runtime.helpers import (
    PagedRunner,
    assert_close_logits,
    check_greedy,
    check_prefill,
    hf_greedy,
    hf_logits,
    prompt_ids,
)

transformers = pytest.importorskip("transformers")

QWEN3_MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
             "norm_topk_prob": True, "mlp_only_layers": [1]}  # fmt: skip
GPT_OSS = {"num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": 8,
           "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 150000.0,
                               "original_max_position_embeddings": 64, "truncate": False,
                               "beta_fast": 32.0, "beta_slow": 1.0}}  # fmt: skip
CASES = [
    ("qwen3_moe-norm-topk-gqa2", "Qwen3MoeConfig", 2, QWEN3_MOE),
    ("qwen3_moe-raw-topk-gqa4", "Qwen3MoeConfig", 4,
     {**QWEN3_MOE, "norm_topk_prob": False, "mlp_only_layers": [], "num_experts_per_tok": 3}),
    ("gpt_oss-window8-gqa2", "GptOssConfig", 2, GPT_OSS),
]
PROMPT_LEN, NEW_TOKENS = 70, 64
CHUNKS = [5, 11, 17, 1, 20]  # uneven, crossing pages and the window; the rest is one chunk


def tiny_moe(cls_name: str, gqa: int, extra: dict):
    """A random 3-layer transformers MoE model with eager attention and experts."""
    heads = 8
    config = getattr(transformers, cls_name)(
        vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=heads, num_key_value_heads=heads // gqa, head_dim=16,
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra,
    )  # fmt: skip
    if "rope_parameters" not in extra:
        config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager"
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("sinks"):
                p.normal_(0, 1.0)  # large enough to move the softmax
            else:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from the folder transformers saved)."""
    name, cls_name, gqa, extra = request.param
    hf = tiny_moe(cls_name, gqa, extra)
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    return hf, load_model(path, dtype=torch.float32)


def test_chunked_prefill_logits_match(pair):
    check_prefill(*pair, PROMPT_LEN, CHUNKS)


def test_greedy_tokens_match(pair):
    check_greedy(*pair, PROMPT_LEN, NEW_TOKENS, [33])


def test_window_and_sinks_matter(pair):
    """The windowed layers and the sinks change the logits past the window (so the matches
    above are not those of a model that ignores them)."""
    hf, loaded = pair
    cfg = loaded.config
    if cfg.sliding_window is None:
        pytest.skip("no sliding-window layers")
    attn = [layer.self_attn for layer in loaded.model.model.layers]
    assert [a.window for a in attn] == [8, None, 8] and all(a.sinks is not None for a in attn)
    ids = prompt_ids(cfg.vocab_size, 30, seed=4)
    ref = hf_logits(hf, ids)
    for attr in ("window", "sinks"):
        saved = [getattr(a, attr) for a in attn]
        for a in attn:
            setattr(a, attr, None)
        try:
            off = PagedRunner(loaded.model, cfg, page_size=16).prefill(ids, [])
        finally:
            for a, value in zip(attn, saved):
                setattr(a, attr, value)
        assert (off - ref).abs().max() > 1e-2 * ref.abs().max(), attr


# -- gpt-oss from an MXFP4 checkpoint ------------------------------------------------------


def _quantize_experts(state: dict, rng: torch.Generator) -> tuple[dict, dict]:
    """Random MXFP4 blocks/scales for every expert weight: the checkpoint tensors, and the
    dequantized weights in transformers' layout (via transformers' own dequantizer)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    packed, dense = {}, {}
    for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        e, rows, cols = state[name].transpose(1, 2).shape  # HF holds (E, in, out)
        blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8, generator=rng)
        scales = torch.randint(123, 127, (e, rows, cols // 32), dtype=torch.uint8, generator=rng)
        packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
        dense[name] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    return packed, dense


@pytest.fixture(scope="module")
def mxfp4_pair(tmp_path_factory):
    hf = tiny_moe("GptOssConfig", 2, GPT_OSS)
    path = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    hf.save_pretrained(path)
    state = load_file(path / "model.safetensors")
    packed, dense = _quantize_experts(state, torch.Generator().manual_seed(3))
    hf.load_state_dict(dense, strict=False)
    save_file({**{k: v for k, v in state.items() if k not in dense}, **packed},
              path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (path / "config.json").write_text(json.dumps(config))
    return hf, load_model(path, dtype=torch.float32)


def test_mxfp4_checkpoint_matches_transformers(mxfp4_pair):
    hf, loaded = mxfp4_pair
    ids = prompt_ids(loaded.config.vocab_size, 40, seed=5)
    runner = PagedRunner(loaded.model, loaded.config, page_size=16)
    assert_close_logits(runner.prefill(ids, [13, 2]), hf_logits(hf, ids))
    greedy = PagedRunner(loaded.model, loaded.config, page_size=16).greedy(ids, 24, [9])
    assert greedy == hf_greedy(hf, ids, 24)


# -- bad checkpoints: one line naming what is missing -----------------------------------------


@pytest.fixture
def qwen_folder(tmp_path):
    tiny_moe("Qwen3MoeConfig", 2, QWEN3_MOE).save_pretrained(tmp_path)
    return tmp_path


def test_missing_expert_tensor_is_named(qwen_folder):
    state = load_file(qwen_folder / "model.safetensors")
    del state["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(state, qwen_folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorruptModelFile, match=r"experts\.5\.up_proj\.weight") as e:
        load_model(qwen_folder)
    assert "\n" not in str(e.value)


def test_missing_mxfp4_scales_are_named(mxfp4_pair, tmp_path):
    src = mxfp4_pair[1].path
    state = load_file(src / "model.safetensors")
    del state["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(CorruptModelFile, match=r"layers\.1\.mlp\.experts\.down_proj_blocks but "
                                                r"not its scales"):
        load_model(tmp_path)


@pytest.mark.parametrize("method", ["awq", "gptq", "fp8"])
def test_unsupported_quantization_is_one_line(qwen_folder, method):
    config = json.loads((qwen_folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (qwen_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match=f"quantized with '{method}'.*supported: mxfp4"):
        load_model(qwen_folder)


def test_engine_serves_the_fused_model(pair):
    """Through the engine as the CPU serves it: fused q/k/v (biases too), oneDNN-packed linears,
    chunked prefill, the decode loop; greedy tokens equal transformers'."""
    import copy

    from memory.device_pool import DevicePagePool
    from memory.kv_layout import KVLayout
    from runtime.engine.cpu_layout import use_onednn
    from runtime.engine.engine import Engine, EngineConfig
    from runtime.engine.kv_pages import PrivatePages
    from runtime.engine.sampling import SamplingParams
    from runtime.kernels.torch_ref import TorchReferenceBackend

    hf, loaded = pair
    cfg, model = loaded.config, copy.deepcopy(loaded.model)
    model.fuse_projections()
    use_onednn(model)
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16, torch.float32)
    engine = Engine(model, PrivatePages(DevicePagePool(layout, 64)), TorchReferenceBackend(),
                    max_context=cfg.max_position_embeddings,
                    config=EngineConfig(prefill_chunk=13, max_batch_tokens=16))
    ids = prompt_ids(cfg.vocab_size, 45, seed=6)
    seq = engine.new_sequence()
    engine.extend(seq, ids)
    got = [e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=32))]
    assert got == hf_greedy(hf, ids, 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qwen3_moe_on_the_gpu_is_as_close_as_bf16_transformers(tmp_path):
    """Our bf16 GPU path (Triton attention, fused MoE, GEMV, graphs) against fp32 transformers,
    no further than transformers itself in bf16; gpt-oss refuses in one line until the Triton
    kernels take windows and sinks."""
    from memory.device_pool import DevicePagePool
    from memory.kv_layout import KVLayout
    from runtime.engine.engine import Engine, EngineConfig
    from runtime.engine.kv_pages import PrivatePages
    from runtime.kernels.backend import UnsupportedAttention, create_backend

    def engine_for(loaded):
        cfg = loaded.config
        layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 64, torch.bfloat16)
        pages = PrivatePages(DevicePagePool(layout, 32, "cuda"))
        return Engine(loaded.model, pages, create_backend("triton"), device="cuda",
                      max_context=cfg.max_position_embeddings,
                      config=EngineConfig(prefill_chunk=50, max_batch_tokens=64))

    hf = tiny_moe("Qwen3MoeConfig", 2, QWEN3_MOE)
    hf.save_pretrained(tmp_path / "q")
    ids = prompt_ids(256, 120)
    ref = hf_logits(hf, ids)[-1]
    hf_bf16 = hf_logits(hf.to(torch.bfloat16), ids)[-1]  # transformers in bf16 (on the CPU)
    loaded = load_model(tmp_path / "q", dtype=torch.bfloat16, device="cuda")
    loaded.model.fuse_projections()
    eng = engine_for(loaded)
    seq = eng.new_sequence()
    eng.extend(seq, ids)
    ours = seq.last_logits.float().cpu().reshape(-1)
    scale = ref.abs().max()
    assert (ours - ref).abs().max() <= max(2 * (hf_bf16 - ref).abs().max(), 1e-2 * scale)
    tiny_moe("GptOssConfig", 2, GPT_OSS).save_pretrained(tmp_path / "g")
    with pytest.raises(UnsupportedAttention, match="sliding windows and attention sinks"):
        gpt = load_model(tmp_path / "g", dtype=torch.bfloat16, device="cuda")
        eng = engine_for(gpt)
        eng.extend(eng.new_sequence(), ids)
