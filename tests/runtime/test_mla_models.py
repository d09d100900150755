"""The latent-attention families against transformers on the same weights, loaded from disk.

Tiny random DeepSeek-V3 (group-limited sigmoid router, a dense first layer, interleaved rope,
and a yarn variant with mscale) and GLM-4.7-Flash (`glm4_moe_lite`) checkpoints, saved as
transformers writes them. Uneven chunked prefill across 16-token pages (expanded attention over
the paged latents) gives fp32 logits within 1e-4 of the logit scale at every position; greedy
64 tokens (absorbed attention in every decode step) are identical.
"""

from __future__ import annotations

import pytest
import torch

from runtime.kernels.torch_mla import absorbed_attention, expanded_attention
from runtime.loader import load_model
from tests.runtime.helpers import (
    check_bf16,
    check_greedy,
    check_prefill,
    randomize,
)

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Glm4MoeLiteConfig"):
    pytest.skip("this transformers predates Glm4MoeLiteConfig", allow_module_level=True)

MLA = {"kv_lora_rank": 32, "q_lora_rank": 48, "qk_rope_head_dim": 8, "v_head_dim": 16,
       "qk_nope_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
       "n_shared_experts": 1, "moe_intermediate_size": 32}  # fmt: skip
YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "mscale": 1.0,
        "mscale_all_dim": 1.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
        "beta_slow": 1.0}  # fmt: skip
CASES = [
    ("deepseek_v3-groups", "DeepseekV3Config",
     {**MLA, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
      "routed_scaling_factor": 2.5}),
    ("deepseek_v3-yarn-no-q-lora", "DeepseekV3Config",
     {**MLA, "q_lora_rank": None, "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1,
      "rope_parameters": YARN,
      "rope_interleave": False}),
    ("glm4_moe_lite", "Glm4MoeLiteConfig",
     {**MLA, "mlp_layer_types": ["dense", "sparse", "sparse"], "routed_scaling_factor": 1.8}),
]
PROMPT_LEN, NEW_TOKENS = 70, 64
CHUNKS = [5, 11, 17, 1, 20]


def tiny_mla(cls_name: str, extra: dict):
    """A random 3-layer transformers MLA model, eager attention and experts."""
    extra = dict(extra)
    rope = extra.pop("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    config = getattr(transformers, cls_name)(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None, rope_parameters=rope, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager")
    return randomize(model)


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    name, cls_name, extra = request.param
    hf = tiny_mla(cls_name, extra)
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    return hf, load_model(path, dtype=torch.float32)


def test_config_reads_the_latent_dims(pair):
    cfg = pair[1].config
    assert cfg.mla is not None and cfg.kv_row() == (1, 1, 32 + 8)
    assert [cfg.is_moe_layer(i) for i in range(3)] in ([False, True, True], [True] * 3)


def test_chunked_prefill_logits_match(pair):
    check_prefill(*pair, PROMPT_LEN, CHUNKS)


def test_greedy_tokens_match(pair):
    check_greedy(*pair, PROMPT_LEN, NEW_TOKENS, [33])


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (1, 37), (5, 40), (16, 16)])
def test_absorbed_equals_expanded(q_len, kv_len):
    """The two forms are one computation: equal up to summation order."""
    g = torch.Generator().manual_seed(q_len * 100 + kv_len)
    heads, dn, dr, dv, rank = 4, 16, 8, 12, 32
    q_nope = torch.randn(q_len, heads, dn, generator=g, dtype=torch.float64)
    q_rope = torch.randn(q_len, heads, dr, generator=g, dtype=torch.float64)
    latents = torch.randn(kv_len, rank + dr, generator=g, dtype=torch.float64)
    w_kv = torch.randn(heads, dn + dv, rank, generator=g, dtype=torch.float64) * 0.3
    a = expanded_attention(q_nope, q_rope, latents, w_kv, 0.2)
    b = absorbed_attention(q_nope, q_rope, latents, w_kv, 0.2)
    assert a.shape == (q_len, heads, dv)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)



def test_bf16_is_no_further_than_transformers_in_bf16(pair):
    check_bf16(*pair)
