"""The DeepSeek families' part of the model configuration: multi-head latent attention
(DeepSeek-V3, GLM-4.7-Flash / `glm4_moe_lite`), DeepSeek-V4's compressed attention and
hyper-connections, and the routers of their experts.

`deepseek_fields(cfg, family)` turns a Hugging Face `config.json` dict into the ModelConfig
fields these families add (runtime/config.py calls it); everything else is read as for the
other families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.errors import UnsupportedModel

MLA_FAMILIES = ("deepseek_v3", "glm4_moe_lite")
DEEPSEEK_FAMILIES = (*MLA_FAMILIES, "deepseek_v4")
# DeepSeek-V4 layer types (transformers' names) and their cache kinds.
SLIDING_ONLY = "sliding_attention"
CSA = "compressed_sparse_attention"  # c4a: overlapping windows, lightning indexer's top-k
HCA = "heavily_compressed_attention"  # c128a: non-overlapping windows, every entry attended
V4_LAYER_TYPES = (SLIDING_ONLY, CSA, HCA)
HASH_MOE = "hash_moe"


@dataclass(frozen=True)
class LatentAttention:
    """MLA dimensions (HF `q_lora_rank`, `kv_lora_rank`, `qk_{nope,rope}_head_dim`,
    `v_head_dim`). The cache holds `kv_lora_rank + qk_rope_head_dim` values per token and
    layer: the normalised latent, then the rotated shared rope key."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class RouterGating:
    """How DeepSeek routers pick and weight experts.

    `scoring`: sigmoid (V3), sqrtsoftplus (V4) or softmax of the logits; the choice adds
    `e_score_correction_bias`; `n_group` / `topk_group`: group-limited choice (V3: groups
    ranked by the sum of their two best scores); weights renormalised when `norm_topk_prob`,
    then multiplied by `routed_scaling_factor`."""

    scoring: str = "sigmoid"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    n_shared_experts: int = 1
    correction_bias: bool = True


@dataclass(frozen=True)
class CompressedAttention:
    """DeepSeek-V4's attention: per layer a sliding window, plus compressed entries (CSA
    every `csa_rate` tokens over overlapping windows with an indexer's top-k, HCA every
    `hca_rate` tokens); hyper-connections with `hc_mult` streams; a grouped output
    projection; hash routing on the `hash_layers`."""

    layer_kinds: tuple[str, ...]
    csa_rate: int
    hca_rate: int
    sliding_window: int
    q_lora_rank: int
    rope_dim: int
    compress_rope_theta: float
    o_groups: int
    o_lora_rank: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    swiglu_limit: float
    hash_layers: tuple[int, ...]

    def rate_of(self, layer: int) -> int:
        """The compression rate of `layer` (0 for a sliding-window-only layer)."""
        kind = self.layer_kinds[layer]
        return {SLIDING_ONLY: 0, CSA: self.csa_rate, HCA: self.hca_rate}[kind]

    def row_sizes(self, layer: int, head_dim: int) -> list[tuple[str, int]]:
        """The named fields of `layer`'s per-token cache row, in order, with their sizes
        (runtime/models/compressed_rows.py says what each holds)."""
        d, di, kind = head_dim, self.index_head_dim, self.layer_kinds[layer]
        if kind == HCA:
            return [("kv", d), ("comp_kv", d), ("comp_gate", d), ("entry", d)]
        if kind == CSA:
            return [("kv", d), ("comp_kv", 2 * d), ("comp_gate", 2 * d), ("entry", d),
                    ("idx_kv", 2 * di), ("idx_gate", 2 * di), ("idx_key", di)]
        return [("kv", d)]

    def row_width(self, head_dim: int) -> int:
        """Elements per token and layer of a page: the widest layer's row."""
        return max(sum(size for _, size in self.row_sizes(i, head_dim))
                   for i in range(len(self.layer_kinds)))


def deepseek_fields(cfg: dict[str, Any], family: str) -> dict[str, Any]:
    """The ModelConfig fields of a DeepSeek-family `config.json` (empty for other families)."""
    if family in MLA_FAMILIES:
        return _mla_fields(cfg, family)
    if family == "deepseek_v4":
        return _v4_fields(cfg)
    return {}


def _experts(cfg: dict[str, Any], dense: tuple[int, ...], gating: RouterGating) -> dict[str, Any]:
    return {
        "num_experts": cfg["n_routed_experts"],
        "num_experts_per_tok": cfg["num_experts_per_tok"],
        "moe_intermediate_size": cfg["moe_intermediate_size"],
        "norm_topk_prob": bool(cfg.get("norm_topk_prob", True)),
        "mlp_only_layers": dense,
        "router": gating,
    }


def _mla_fields(cfg: dict[str, Any], family: str) -> dict[str, Any]:
    layers = cfg["num_hidden_layers"]
    if family == "glm4_moe_lite":
        kinds = cfg.get("mlp_layer_types") or ["dense"] + ["sparse"] * (layers - 1)
        dense = tuple(i for i, k in enumerate(kinds) if k != "sparse")
    else:
        dense = tuple(range(min(layers, cfg.get("first_k_dense_replace", 0))))
    mla = LatentAttention(
        q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=cfg["kv_lora_rank"],
        qk_nope_head_dim=cfg["qk_nope_head_dim"], qk_rope_head_dim=cfg["qk_rope_head_dim"],
        v_head_dim=cfg["v_head_dim"], rope_interleave=bool(cfg.get("rope_interleave", True)),
    )
    gating = RouterGating(
        scoring="sigmoid", n_group=cfg.get("n_group") or 1, topk_group=cfg.get("topk_group") or 1,
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        n_shared_experts=cfg.get("n_shared_experts") or 0,
    )
    return {"mla": mla, "head_dim": mla.qk_head_dim, "num_kv_heads": 1,
            **_experts(cfg, dense, gating)}


def _v4_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    layers = cfg["num_hidden_layers"]
    kinds = tuple(cfg.get("layer_types") or ())
    bad = set(kinds) - set(V4_LAYER_TYPES)
    if bad or len(kinds) != layers:
        raise UnsupportedModel(f"unsupported DeepSeek-V4 layer_types {sorted(bad) or len(kinds)};"
                               f" supported: one of {', '.join(V4_LAYER_TYPES)} per layer")
    rates = cfg.get("compress_rates") or {CSA: 4, HCA: 128}
    mlp_kinds = cfg.get("mlp_layer_types") or [HASH_MOE] * 3 + ["moe"] * (layers - 3)
    rope = cfg.get("rope_parameters") or {}
    head_dim = cfg["head_dim"]
    v4 = CompressedAttention(
        layer_kinds=kinds, csa_rate=rates[CSA], hca_rate=rates[HCA],
        sliding_window=cfg.get("sliding_window", 128), q_lora_rank=cfg["q_lora_rank"],
        rope_dim=int(head_dim * cfg.get("partial_rotary_factor", 64 / 512)),
        compress_rope_theta=float(rope.get("compress", {}).get(
            "rope_theta", cfg.get("compress_rope_theta", 160000.0))),
        o_groups=cfg["o_groups"], o_lora_rank=cfg["o_lora_rank"],
        index_n_heads=cfg["index_n_heads"], index_head_dim=cfg["index_head_dim"],
        index_topk=cfg["index_topk"], hc_mult=cfg["hc_mult"],
        hc_sinkhorn_iters=cfg["hc_sinkhorn_iters"], hc_eps=float(cfg["hc_eps"]),
        swiglu_limit=float(cfg.get("swiglu_limit", 10.0)),
        hash_layers=tuple(i for i, k in enumerate(mlp_kinds) if k == HASH_MOE),
    )
    if rope.get("compress", {}).get("rope_type", "default") != "default":
        raise UnsupportedModel("DeepSeek-V4 with a scaled compress rope (yarn) is not supported "
                               "yet; supported: rope_type default")
    gating = RouterGating(
        scoring=cfg.get("scoring_func", "sqrtsoftplus"),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        n_shared_experts=cfg.get("n_shared_experts") or 1,
    )
    main_theta = float(rope.get("main", {}).get("rope_theta", cfg.get("rope_theta", 10000.0)))
    return {"v4": v4, "num_kv_heads": 1, "rope_theta": main_theta,
            "sliding_window": v4.sliding_window, "attention_sinks": True,
            **_experts(cfg, (), gating)}
