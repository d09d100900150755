"""TensorSplit: which slice of each weight one rank holds, and the checks that refuse a split.

Megatron's layout for the dense families: q/k/v and gate/up are split by output rows (whole
heads, whole columns of the feed-forward), o_proj and down_proj by input columns (their partial
sums are all-reduced, see parallel_ops.py), the head by vocabulary rows (gathered). Embeddings
and norms are kept whole on every rank. The same rules narrow a model built on the meta device
(so the loader reads only the rank's slice of each safetensors tensor) or a loaded one (GGUF).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from torch import nn

from runtime.config import ModelConfig
from runtime.errors import RuntimeError_

DENSE_FAMILIES = ("llama", "qwen2", "qwen3")

_COLUMN = re.compile(r"\.self_attn\.(q|k|v)_proj\.(weight|bias)$|\.mlp\.(gate|up)_proj\.weight$")
_ROW = re.compile(r"\.self_attn\.o_proj\.weight$|\.mlp\.down_proj\.weight$")


class InvalidParallel(RuntimeError_):
    """A tensor-parallel setting the model or the machine cannot serve (one line, the fix)."""


@dataclass(frozen=True)
class TensorSplit:
    """Rank `rank` of `world`: its slice `(dim, start, size)` of every split tensor."""

    rank: int
    world: int
    config: ModelConfig

    def slice_of(self, name: str) -> tuple[int, int, int] | None:
        """Where this rank's part of tensor `name` lies in the whole one; None: kept whole."""
        cfg, n = self.config, self.world
        if name == "lm_head.weight":
            start, stop = vocab_bounds(cfg.vocab_size, n)[self.rank : self.rank + 2]
            return 0, start, stop - start
        m = _COLUMN.search(name)
        if m:
            proj = m.group(1) or m.group(3)
            per_rank = {"q": cfg.num_heads * cfg.head_dim, "k": cfg.num_kv_heads * cfg.head_dim,
                        "v": cfg.num_kv_heads * cfg.head_dim}.get(proj, cfg.intermediate_size)
            size = per_rank // n
            return 0, self.rank * size, size
        if _ROW.search(name):
            whole = cfg.intermediate_size if "down_proj" in name else cfg.num_heads * cfg.head_dim
            size = whole // n
            return 1, self.rank * size, size
        return None

    def read(self, handle, name: str) -> torch.Tensor:
        """This rank's slice of tensor `name` from an open safetensors file, and nothing more."""
        dim, start, size = self.slice_of(name)
        part = handle.get_slice(name)
        return part[start : start + size] if dim == 0 else part[:, start : start + size]

    def narrow(self, model: nn.Module) -> None:
        """Replace every split parameter by this rank's slice (meta or real tensors)."""
        for name, param in list(model.named_parameters()):
            where = self.slice_of(name)
            if where is None:
                continue
            dim, start, size = where
            part = param.data.narrow(dim, start, size)
            if not part.is_meta:
                part = part.contiguous()  # a copy: the whole tensor can be freed
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, nn.Parameter(part, requires_grad=False))

    def finish(self, model: nn.Module) -> None:
        """After loading: local head counts, row-parallel biases kept aside (added once, after
        the all-reduce), the modules parallel_ops.py reduces or gathers marked, and a tied
        head made a view of this rank's vocabulary rows of the embedding."""
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.num_heads //= self.world
            attn.num_kv_heads //= self.world
            for module in (attn.o_proj, layer.mlp.down_proj):
                module.tp_reduce = True
                bias = module.bias
                module.bias = None
                module.register_buffer("row_bias", None if bias is None else bias.data)
        bounds = vocab_bounds(self.config.vocab_size, self.world)
        if model.lm_head is None:
            start, stop = bounds[self.rank], bounds[self.rank + 1]
            embed = model.model.embed_tokens.weight
            with torch.device("meta"):
                head = nn.Linear(embed.shape[1], stop - start, bias=False)
            head.weight = nn.Parameter(embed.data[start:stop], requires_grad=False)
            model.lm_head = head
        model.lm_head.tp_gather = tuple(b - a for a, b in zip(bounds, bounds[1:]))

    def local_config(self) -> ModelConfig:
        """The config as one rank sees attention: its share of the heads (its KV layout)."""
        cfg = self.config
        return dataclasses.replace(cfg, num_heads=cfg.num_heads // self.world,
                                   num_kv_heads=cfg.num_kv_heads // self.world)


def vocab_bounds(vocab: int, world: int) -> list[int]:
    """Where each rank's vocabulary rows start (and the last ends): near-equal parts."""
    return [vocab * r // world for r in range(world + 1)]


def check_splittable(cfg: ModelConfig, world: int) -> None:
    """Raise InvalidParallel (one line) when `cfg` cannot be split `world` ways."""
    if cfg.family not in DENSE_FAMILIES:
        kind = "a mixture of experts" if cfg.num_experts else "not a dense attention model"
        raise InvalidParallel(
            f"--tensor-parallel supports the dense families ({', '.join(DENSE_FAMILIES)}); "
            f"{cfg.family} is {kind}; serve it with --tensor-parallel 1")
    for what, count in (("attention heads", cfg.num_heads), ("KV heads", cfg.num_kv_heads),
                        ("feed-forward columns", cfg.intermediate_size)):
        if count % world:
            raise InvalidParallel(
                f"--tensor-parallel {world} does not divide the model's {count} {what}; "
                f"use a divisor of {cfg.num_kv_heads} (the KV heads)")
    if cfg.attention_sinks or cfg.layer_types and any(t != "full_attention"
                                                       for t in cfg.layer_types):
        raise InvalidParallel(f"--tensor-parallel does not split {cfg.family}'s sliding or "
                              "sink attention yet; use --tensor-parallel 1")
