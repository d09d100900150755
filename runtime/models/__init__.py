"""Model definitions as plain nn.Modules, and the registry that builds one from a ModelConfig.

Files:
- llama.py: CausalLM for the Llama family (Llama / Mistral, Qwen2 qkv bias, Qwen3 q/k norm),
  and the layers the other families reuse (RMSNorm, Attention with window and sinks, MLP).
- moe.py: the routed-experts feed-forward: TopKRouter, stacked Experts.
- qwen3_moe.py: Qwen3-MoE (Qwen3 attention, sparse and dense layers).
- gpt_oss.py: gpt-oss (sinks, sliding-window layers, biased experts, clamped SwiGLU).
- gated_deltanet.py: Gated DeltaNet, the linear-attention layer (conv, gated delta rule).
- qwen3_next.py: hybrid Qwen3-Next and Qwen3.5 (dense, MoE): DeltaNet + gated attention layers.
- mamba2.py: the Mamba-2 mixer (conv, selective scan, grouped gated norm).
- nemotron_h.py: Nemotron-H: Mamba-2, rope-less attention and squared-ReLU MLP blocks.
- recurrent_state.py: the linear layers' per-sequence states in slots, bound per forward.
- mla.py: multi-head latent attention (one cached latent row per token; absorbed decode).
- deepseek_v3.py: DeepSeek-V3 and GLM-4.7-Flash (MLA, grouped sigmoid router, shared experts).
- compressed_rows.py: DeepSeek-V4's per-token cache row (window key, compressor inputs, entries).
- compressed_attention.py: DeepSeek-V4 attention: sliding window + CSA / HCA compressed entries.
- deepseek_v4.py: DeepSeek-V4 (hyper-connections, hash and learned routing, clamped experts).
"""

from __future__ import annotations

from torch import nn

from runtime.config import ModelConfig
from runtime.errors import UnsupportedModel
from runtime.models.deepseek_v3 import DeepseekV3ForCausalLM
from runtime.models.deepseek_v4 import DeepseekV4ForCausalLM
from runtime.models.gpt_oss import GptOssForCausalLM
from runtime.models.llama import CausalLM
from runtime.models.nemotron_h import NemotronHForCausalLM
from runtime.models.qwen3_moe import Qwen3MoeForCausalLM
from runtime.models.qwen3_next import Qwen3NextForCausalLM

# ModelConfig.family -> model class. One class serves the whole family; flags pick the variant.
MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "llama": CausalLM,
    "qwen2": CausalLM,
    "qwen3": CausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "gpt_oss": GptOssForCausalLM,
    "qwen3_next": Qwen3NextForCausalLM,
    "qwen3_5": Qwen3NextForCausalLM,
    "qwen3_5_moe": Qwen3NextForCausalLM,
    "nemotron_h": NemotronHForCausalLM,
    "deepseek_v3": DeepseekV3ForCausalLM,
    "glm4_moe_lite": DeepseekV3ForCausalLM,
    "deepseek_v4": DeepseekV4ForCausalLM,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the model for `cfg` on the current default device (use meta to skip init)."""
    cls = MODEL_REGISTRY.get(cfg.family)
    if cls is None:
        names = ", ".join(sorted(MODEL_REGISTRY))
        raise UnsupportedModel(f"unsupported model family {cfg.family!r}; supported: {names}")
    return cls(cfg)


__all__ = ["MODEL_REGISTRY", "CausalLM", "build_model"]
