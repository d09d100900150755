"""DeepSeek-V4 against transformers on the same weights, loaded from the checkpoint transformers
writes (DeepSeek's own tensor names: `attn.wq_a`, `ffn.experts.E.w1`, `hc_attn_fn`, ...).

Tiny random configs with every layer kind (sliding only, CSA at stride 4 with an 8-head
lightning indexer keeping 3 entries, HCA at stride 8), an 8-token window, hyper-connections,
hash routing on the first layer and learned routing with a correction bias on the others.
Uneven chunked prefill across 16-token pages (chunks of one to twenty tokens, closing windows
mid-chunk and across chunks) must give fp32 logits within 1e-4 of the logit scale at every
position; greedy 64 tokens must be identical.
"""

from __future__ import annotations

import json

import pytest
import torch

from runtime.config_deepseek import CSA, HCA, SLIDING_ONLY
from runtime.errors import UnsupportedModel
from runtime.loader import load_model
from runtime.models.compressed_rows import row_fields, row_width
from tests.runtime.helpers import (
    PagedRunner,
    assert_close_logits,
    check_bf16,
    check_greedy,
    check_prefill,
    hf_logits,
    prompt_ids,
    randomize,
)

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DeepseekV4Config"):
    pytest.skip("this transformers predates DeepseekV4Config", allow_module_level=True)

KINDS = [SLIDING_ONLY, CSA, HCA, CSA]
CASES = [
    ("v4-hc2-topk3", {"hc_mult": 2, "index_topk": 3}),
    ("v4-hc4-all-learned", {"hc_mult": 4, "index_topk": 5, "mlp_layer_types": ["moe"] * 4,
                            "scoring_func": "sigmoid"}),
]
PROMPT_LEN, NEW_TOKENS = 70, 64
CHUNKS = [5, 11, 17, 1, 20]


def tiny_v4(extra: dict):
    """A random 4-layer transformers DeepSeek-V4 model (eager attention and experts)."""
    options = {"mlp_layer_types": ["hash_moe", "moe", "moe", "moe"], **extra}
    config = transformers.DeepseekV4Config(
        vocab_size=256, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, q_lora_rank=48,
        num_experts_per_tok=2, n_routed_experts=8, layer_types=KINDS,
        compress_rates={CSA: 4, HCA: 8}, hc_sinkhorn_iters=5, sliding_window=8, o_groups=2,
        o_lora_rank=16, index_n_heads=8, index_head_dim=16, max_position_embeddings=256,
        partial_rotary_factor=0.25, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        **options,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager")
    return randomize(model)


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    hf = tiny_v4(request.param[1])
    path = tmp_path_factory.mktemp(request.param[0])
    hf.save_pretrained(path)
    return hf, load_model(path, dtype=torch.float32)


def test_config_and_rows(pair):
    cfg = pair[1].config
    assert cfg.v4 is not None and cfg.v4.layer_kinds == tuple(KINDS)
    assert [cfg.v4.rate_of(i) for i in range(4)] == [0, 4, 8, 4]
    assert cfg.kv_row() == (1, 1, row_width(cfg))
    assert row_width(cfg) == 6 * 32 + 5 * 16  # the CSA row is the widest
    assert row_fields(cfg, 0).comp_kv is None and row_fields(cfg, 2).idx_key is None


def test_chunked_prefill_logits_match(pair):
    check_prefill(*pair, PROMPT_LEN, CHUNKS)


def test_greedy_tokens_match(pair):
    check_greedy(*pair, PROMPT_LEN, NEW_TOKENS, [33])


def test_compression_and_selection_matter(pair):
    """Without the compressed entries, or with every entry selected, the logits past the
    window move (so the matches above are not those of a model that ignores them)."""
    hf, loaded = pair
    ids = prompt_ids(loaded.config.vocab_size, 60, seed=4)
    ref = hf_logits(hf, ids)
    attn = [layer.self_attn for layer in loaded.model.model.layers]
    comps = [a.compressor for a in attn]
    try:
        for a in attn:
            a.compressor = None
        off = PagedRunner(loaded.model, loaded.config).prefill(ids, [])
    finally:
        for a, c in zip(attn, comps):
            a.compressor = c
    assert (off - ref).abs().max() > 1e-2 * ref.abs().max()
    v4 = loaded.config.v4
    for a in attn:
        a.v4 = type(v4)(**{**v4.__dict__, "index_topk": 1000})
    try:
        every = PagedRunner(loaded.model, loaded.config).prefill(ids, [])
    finally:
        for a in attn:
            a.v4 = v4
    assert (every - ref).abs().max() > 1e-3 * ref.abs().max()
    assert_close_logits(PagedRunner(loaded.model, loaded.config).prefill(ids, [7]), ref)


def test_unknown_layer_type_is_one_line(tmp_path):
    tiny_v4(CASES[0][1]).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["layer_types"][1] = "linear_attention"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModel, match="DeepSeek-V4 layer_types.*linear_attention") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)



def test_bf16_is_no_further_than_transformers_in_bf16(pair):
    check_bf16(*pair)
