"""DeepSeek-V4 checkpoint names -> ours (transformers').

DeepSeek ships V4 under its own names (`layers.0.attn.wq_a.weight`, `ffn.experts.3.w1`,
`hc_attn_fn`, `embed.weight`, `head.weight`), and transformers writes them back when it saves
a V4 model (with a `model.` prefix on most). The renames follow transformers'
conversion mapping; names already ours pass through unchanged. Experts stay per expert
(`mlp.experts.E.{gate,up,down}_proj.weight`) for runtime/loader/experts.py to stack.
"""

from __future__ import annotations

import re

# Applied in order, each to the result of the previous (as transformers does).
_RENAMES: list[tuple[str, str]] = [
    (r"^(layers\.|embed\.|norm\.|hc_head_)", r"model.\1"),
    (r"^model\.embed\.weight$", "model.embed_tokens.weight"),
    (r"^head\.weight$", "lm_head.weight"),
    (r"^model\.hc_head_(fn|base|scale)$", r"model.hc_head.hc_\1"),
    (r"\.attn\.", ".self_attn."),
    (r"\.ffn\.", ".mlp."),
    (r"\.indexer\.compressor\.", ".compressor.indexer."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_(attn|ffn)_(fn|base|scale)$", r".\1_hc.\2"),
    (r"\.attn_sink$", ".sinks"),
    (r"\.self_attn\.indexer\.weights_proj\.", ".self_attn.compressor.indexer.scorer.weights_proj."),
    (r"\.self_attn\.indexer\.wq_b\.", ".self_attn.compressor.indexer.q_b_proj."),
    (r"(\.self_attn\.(?:compressor\.(?:indexer\.)?)?)norm\.", r"\1kv_norm."),
    (r"\.ape$", ".position_bias"),
    (r"\.wq_a\.", ".q_a_proj."),
    (r"\.self_attn\.wq_b\.", ".self_attn.q_b_proj."),
    (r"\.wkv\.", ".kv_proj."),
    (r"\.wgate\.", ".gate_proj."),
    (r"\.wo_a\.", ".o_a_proj."),
    (r"\.wo_b\.", ".o_b_proj."),
    (r"\.q_norm\.", ".q_a_norm."),
    (r"\.gate\.bias$", ".gate.e_score_correction_bias"),
    (r"\.(shared_experts|experts\.\d+)\.w1\.", r".\1.gate_proj."),
    (r"\.(shared_experts|experts\.\d+)\.w2\.", r".\1.down_proj."),
    (r"\.(shared_experts|experts\.\d+)\.w3\.", r".\1.up_proj."),
]
_COMPILED = [(re.compile(p), r) for p, r in _RENAMES]


def v4_name(name: str) -> str:
    """Our parameter name for a DeepSeek-V4 checkpoint tensor name."""
    for pattern, repl in _COMPILED:
        name = pattern.sub(repl, name)
    return name
