"""Our CausalLM against transformers on the same weights: logits at every position, greedy tokens.

Tiny random models cover each family and rope scaling, tied and untied heads and GQA ratios 1-8;
the embedded SmolLM2 GGUF covers a real checkpoint through the GGUF loader.
"""

from __future__ import annotations

import pytest
import torch

from runtime.loader import load_model
from runtime.models import build_model
from runtime.rope import inv_freq_and_scale
from tests.runtime.helpers import (
    PagedRunner,
    assert_close_logits,
    check_greedy,
    check_prefill,
    hf_greedy,
    hf_logits,
    prompt_ids,
    tiny_hf_model,
)

transformers = pytest.importorskip("transformers")

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
YARN_MSCALE = {**YARN, "mscale": 0.9, "mscale_all_dim": 0.5, "beta_fast": 16.0}
LINEAR = {"rope_type": "linear", "factor": 2.0}
DEFAULT = {"rope_type": "default"}

# (id, HF config class, rope, q heads per kv head, tied, extra config, shard size)
CASES = [
    ("llama-llama3-gqa2-sharded", "LlamaConfig", LLAMA3, 2, False, {}, "40KB"),
    ("llama-yarn-gqa4-tied", "LlamaConfig", YARN, 4, True, {}, None),
    ("llama-linear-gqa8-bias", "LlamaConfig", LINEAR, 8, False, {"attention_bias": True}, None),
    ("qwen2-yarn-mscale-gqa1-tied", "Qwen2Config", YARN_MSCALE, 1, True, {}, None),
    ("qwen3-default-gqa2", "Qwen3Config", DEFAULT, 2, False, {}, None),
    ("qwen3-llama3-gqa1-tied", "Qwen3Config", LLAMA3, 1, True, {}, None),
]
PROMPT_LEN, NEW_TOKENS = 70, 64
CHUNKS = [5, 11, 17, 1, 20]  # uneven, crossing 16-token page boundaries; the rest is one chunk


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(transformers model, our loaded model) on the same weights, saved and loaded from disk."""
    _, cls_name, rope, gqa, tied, extra, shard = request.param
    hf = tiny_hf_model(cls_name, rope, gqa, tied, extra)
    path = tmp_path_factory.mktemp(request.param[0])
    hf.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert (path / "model.safetensors.index.json").is_file()
    return hf, load_model(path, dtype=torch.float32)


def test_rope_inv_freq_matches_transformers(pair):
    hf, loaded = pair
    ours, scale = inv_freq_and_scale(loaded.config)
    rotary = hf.model.rotary_emb
    assert torch.equal(ours, rotary.inv_freq.cpu())
    assert scale == rotary.attention_scaling


def test_chunked_prefill_logits_match(pair):
    check_prefill(*pair, PROMPT_LEN, CHUNKS)


def test_greedy_tokens_match(pair):
    check_greedy(*pair, PROMPT_LEN, NEW_TOKENS, [33])


def test_build_model_takes_hf_state_dict(pair):
    hf, loaded = pair
    fresh = build_model(loaded.config)
    fresh.load_state_dict(hf.state_dict(), strict=False)  # a tied HF dict also holds lm_head
    ids = prompt_ids(loaded.config.vocab_size, 20, seed=3)
    ours = PagedRunner(fresh.eval(), loaded.config).prefill(ids, [7])
    assert_close_logits(ours, hf_logits(hf, ids))


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf):
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    return hf.eval(), load_model(smollm2_gguf, dtype=torch.float32)


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smollm2_pair):
    hf, loaded = smollm2_pair
    ours_params = dict(loaded.model.named_parameters())
    # On the CPU the tied table is held once, by the head; lookups read the file's rows.
    ours_params["model.embed_tokens.weight"] = ours_params.pop("packed_head.weight")
    for name, p in hf.named_parameters():
        assert torch.equal(ours_params[name], p), name  # same dequantization, permutation undone
    ids = prompt_ids(loaded.config.vocab_size, 100, seed=4)
    rows = torch.tensor(ids)
    assert torch.equal(loaded.model.model.embed_tokens(rows), hf.model.embed_tokens(rows))
    runner = PagedRunner(loaded.model, loaded.config, page_size=16)
    assert_close_logits(runner.prefill(ids, [40, 9, 16]), hf_logits(hf, ids))
    greedy = PagedRunner(loaded.model, loaded.config, page_size=16).greedy(ids, 64, [57])
    assert greedy == hf_greedy(hf, ids, 64)
