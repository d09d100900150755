"""Model configuration: one frozen dataclass for the dense (Llama / Qwen2 / Qwen3), the
mixture-of-experts (Qwen3-MoE, gpt-oss), the hybrid linear-attention (Qwen3-Next, Qwen3.5) and
the DeepSeek (latent and compressed attention, runtime/config_deepseek.py) families."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.config_deepseek import (
    CompressedAttention,
    LatentAttention,
    RouterGating,
    deepseek_fields,
)
from runtime.errors import UnsupportedModel

# Hugging Face `architectures` / `model_type` names we serve, mapped to our family flags.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GptOssForCausalLM": "gpt_oss",
    "Qwen3NextForCausalLM": "qwen3_next",
    "Qwen3_5ForCausalLM": "qwen3_5",
    "Qwen3_5MoeForCausalLM": "qwen3_5_moe",
    "NemotronHForCausalLM": "nemotron_h",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Glm4MoeLiteForCausalLM": "glm4_moe_lite",
    "DeepseekV4ForCausalLM": "deepseek_v4",
}
SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types
LINEAR = "linear_attention"  # a Gated DeltaNet layer (hybrid families)
HYBRID_FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_moe", "nemotron_h")
MLP_BLOCK = "mlp"  # Nemotron-H: a block whose only mixer is the feed-forward
# Nemotron-H's older `hybrid_override_pattern`, one character per block.
_NEMOTRON_PATTERN = {"M": LINEAR, "*": FULL, "-": MLP_BLOCK, "E": "moe"}


@dataclass(frozen=True)
class RopeScaling:
    """Rope scaling as in HF `rope_scaling` / `rope_parameters` (default|linear|llama3|yarn)."""

    type: str = "default"
    factor: float = 1.0
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    # yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True  # yarn: round the correction range to whole dims (HF default)


@dataclass(frozen=True)
class LinearAttention:
    """Gated DeltaNet dimensions (HF `linear_*`): conv kernel, key and value heads and dims."""

    conv_kernel: int
    key_head_dim: int
    value_head_dim: int
    num_key_heads: int
    num_value_heads: int


@dataclass(frozen=True)
class Mamba2:
    """Mamba-2 mixer dimensions and settings (Nemotron-H's `mamba_*`, `ssm_state_size`, ...)."""

    num_heads: int
    head_dim: int
    state_size: int
    n_groups: int
    conv_kernel: int
    chunk_size: int
    time_step_min: float
    use_conv_bias: bool
    use_bias: bool


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model definition and the KV layout need to know about a checkpoint."""

    family: str  # "llama" | "qwen2" | "qwen3" | "qwen3_moe" | "gpt_oss" | HYBRID_FAMILIES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # qkv bias (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Mixture of experts (0 experts: dense).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k softmax weights (Qwen3-MoE)
    decoder_sparse_step: int = 1  # every n-th layer is sparse (Qwen3-MoE)
    mlp_only_layers: tuple[int, ...] = ()  # dense layers among sparse ones (Qwen3-MoE)
    swiglu_alpha: float = 1.702  # gpt-oss's clamped SwiGLU
    swiglu_limit: float = 7.0
    # Attention variants (gpt-oss): per-layer type, the sliding window, learned sinks.
    layer_types: tuple[str, ...] = ()  # SLIDING / FULL per layer; empty: all full
    sliding_window: int | None = None
    attention_sinks: bool = False
    # Hybrid linear attention (Qwen3-Next, Qwen3.5): LINEAR / FULL in layer_types.
    linear_attention: LinearAttention | None = None
    partial_rotary_factor: float = 1.0  # rope rotates the first head_dim * factor dims
    shared_expert_intermediate_size: int = 0  # a gated shared expert beside the routed ones
    mamba: Mamba2 | None = None  # Nemotron-H: LINEAR layers are Mamba-2 mixers
    mlp_bias: bool = False
    # DeepSeek: latent attention (V3, GLM-4.7-Flash), compressed attention (V4), their routers.
    mla: LatentAttention | None = None
    v4: CompressedAttention | None = None
    router: RouterGating | None = None

    def kv_row(self) -> tuple[int, int, int]:
        """What a page holds per token and layer: (planes, heads, dim). K and V planes of
        `num_kv_heads x head_dim` for attention; one plane of MLA's latent; one plane of
        DeepSeek-V4's rows (runtime/models/compressed_rows.py)."""
        if self.mla is not None:
            return 1, 1, self.mla.latent_dim
        if self.v4 is not None:
            return 1, 1, self.v4.row_width(self.head_dim)
        return 2, self.num_kv_heads, self.head_dim

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer`'s feed-forward is the routed experts block."""
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    def is_linear_layer(self, layer: int) -> bool:
        """Whether layer `layer` is a linear-attention (Gated DeltaNet) layer."""
        return bool(self.layer_types) and self.layer_types[layer] == LINEAR

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def window_of(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, None for full attention."""
        if self.layer_types and self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face `config.json` dict; raises UnsupportedModel for other archs."""
        arch = (cfg.get("architectures") or [None])[0]
        family = SUPPORTED_ARCHITECTURES.get(arch or "")
        if family is None:
            names = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
            raise UnsupportedModel(f"unsupported architecture {arch!r}; supported: {names}")
        if family == "nemotron_h":
            cfg = _nemotron_aliases(cfg)
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        fields = dict(
            family=family,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg.get("intermediate_size") or cfg["moe_intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(cfg),
            rope_scaling=_rope_scaling(cfg),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", family == "qwen2")),
            qk_norm=family in ("qwen3", "qwen3_moe"),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            **_moe_fields(cfg, family),
            **_hybrid_fields(cfg, family),
        )
        fields.update(deepseek_fields(cfg, family))
        return cls(**fields)


def _moe_fields(cfg: dict[str, Any], family: str) -> dict[str, Any]:
    if family == "qwen3_moe":
        return {
            "num_experts": cfg.get("num_experts") or cfg["num_local_experts"],
            "num_experts_per_tok": cfg["num_experts_per_tok"],
            "moe_intermediate_size": cfg["moe_intermediate_size"],
            "norm_topk_prob": bool(cfg.get("norm_topk_prob", False)),
            "decoder_sparse_step": cfg.get("decoder_sparse_step") or 1,
            "mlp_only_layers": tuple(cfg.get("mlp_only_layers") or ()),
        }
    if family == "gpt_oss":
        layers = cfg["num_hidden_layers"]
        types = cfg.get("layer_types") or [SLIDING if i % 2 == 0 else FULL for i in range(layers)]
        unknown = set(types) - {SLIDING, FULL}
        if unknown or len(types) != layers:
            raise UnsupportedModel(f"unsupported layer_types {sorted(unknown) or len(types)}; "
                                   f"supported: one of {SLIDING}, {FULL} per layer")
        return {
            "num_experts": cfg["num_local_experts"],
            "num_experts_per_tok": cfg["num_experts_per_tok"],
            "moe_intermediate_size": cfg["intermediate_size"],
            "swiglu_alpha": float(cfg.get("swiglu_alpha", 1.702)),
            "swiglu_limit": float(cfg.get("swiglu_limit", 7.0)),
            "layer_types": tuple(types),
            "sliding_window": cfg.get("sliding_window") or 128,
            "attention_sinks": True,
        }
    return {}


def _nemotron_aliases(cfg: dict[str, Any]) -> dict[str, Any]:
    """Nemotron-H's names for the generic fields; the block pattern as `layer_types`."""
    types = cfg.get("layers_block_type")
    if types is None and "hybrid_override_pattern" in cfg:
        types = [_NEMOTRON_PATTERN.get(ch, ch) for ch in cfg["hybrid_override_pattern"]]
    types = list(types or [])
    unknown = set(types) - {LINEAR, FULL, MLP_BLOCK}
    if unknown or not types:
        raise UnsupportedModel(f"unsupported Nemotron-H blocks {sorted(unknown) or types}; "
                               f"supported: {LINEAR} (Mamba-2), {FULL}, {MLP_BLOCK}")
    return {**cfg, "layer_types": types, "num_hidden_layers": len(types),
            "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5)}


def _mamba_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    mamba = Mamba2(
        num_heads=cfg["mamba_num_heads"], head_dim=cfg["mamba_head_dim"],
        state_size=cfg["ssm_state_size"], n_groups=cfg.get("n_groups", 1),
        conv_kernel=cfg.get("conv_kernel", 4), chunk_size=cfg.get("chunk_size", 128),
        time_step_min=float(cfg.get("time_step_min", 0.001)),
        use_conv_bias=bool(cfg.get("use_conv_bias", True)), use_bias=bool(cfg.get("use_bias")),
    )
    return {"layer_types": tuple(cfg["layer_types"]), "mamba": mamba,
            "mlp_bias": bool(cfg.get("mlp_bias", False))}


def _hybrid_fields(cfg: dict[str, Any], family: str) -> dict[str, Any]:
    if family not in HYBRID_FAMILIES:
        return {}
    if family == "nemotron_h":
        return _mamba_fields(cfg)
    layers = cfg["num_hidden_layers"]
    interval = cfg.get("full_attention_interval") or 4
    types = cfg.get("layer_types") or [FULL if (i + 1) % interval == 0 else LINEAR
                                       for i in range(layers)]
    unknown = set(types) - {LINEAR, FULL}
    if unknown or len(types) != layers:
        raise UnsupportedModel(f"unsupported layer_types {sorted(unknown) or len(types)}; "
                               f"supported: one of {LINEAR}, {FULL} per layer")
    linear = LinearAttention(
        conv_kernel=cfg.get("linear_conv_kernel_dim", 4),
        key_head_dim=cfg["linear_key_head_dim"], value_head_dim=cfg["linear_value_head_dim"],
        num_key_heads=cfg["linear_num_key_heads"], num_value_heads=cfg["linear_num_value_heads"],
    )
    partial = _rope_params(cfg).get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    out: dict[str, Any] = {"layer_types": tuple(types), "linear_attention": linear,
                           "partial_rotary_factor": float(partial or 1.0)}
    if family != "qwen3_5":  # Qwen3-Next and Qwen3.5-MoE: routed experts + a shared one
        out.update(num_experts=cfg["num_experts"], num_experts_per_tok=cfg["num_experts_per_tok"],
                   moe_intermediate_size=cfg["moe_intermediate_size"],
                   norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
                   shared_expert_intermediate_size=cfg["shared_expert_intermediate_size"])
    if family == "qwen3_next":
        out.update(decoder_sparse_step=cfg.get("decoder_sparse_step") or 1,
                   mlp_only_layers=tuple(cfg.get("mlp_only_layers") or ()))
    return out


def _rope_params(cfg: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 moved rope settings into `rope_parameters`; 4.x used `rope_scaling`.
    return cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}


def _rope_theta(cfg: dict[str, Any]) -> float:
    return float(_rope_params(cfg).get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _rope_scaling(cfg: dict[str, Any]) -> RopeScaling:
    p = _rope_params(cfg)
    kind = p.get("rope_type", p.get("type", "default"))
    if kind not in ("default", "linear", "llama3", "yarn"):
        raise UnsupportedModel(
            f"unsupported rope scaling {kind!r}; supported: default, linear, llama3, yarn"
        )
    known = RopeScaling.__dataclass_fields__
    kwargs = {k: v for k, v in p.items() if k in known and k != "type"}
    return RopeScaling(type=kind, **kwargs)
