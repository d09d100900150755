"""What loaders share: LoadedModel, the meta build, per-tensor assignment, weights_id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from runtime.config import ModelConfig
from runtime.errors import CorruptModelFile, UnsupportedModel
from runtime.models import build_model

_EDGE_BYTES = 1 << 20  # weights_id hashes this much from each end of every file


@dataclass
class LoadedModel:
    """A model with its weights in place, and what the engine needs to know about it."""

    model: nn.Module
    config: ModelConfig
    path: Path
    dtype: torch.dtype
    weights_id: str  # content-derived, stable across copies and machines
    generation_eos_ids: tuple[int, ...]


def build_on_meta(cfg: ModelConfig) -> nn.Module:
    """The model with every parameter on the meta device: no memory, no random init."""
    with torch.device("meta"):
        return build_model(cfg).eval()


def assign_tensor(
    model: nn.Module, name: str, value: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> None:
    """Replace parameter `name` by `value` cast to dtype/device; raises on a shape mismatch."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    expected = getattr(module, attr).shape
    if value.shape != expected:
        raise CorruptModelFile(
            f"tensor {name} has shape {tuple(value.shape)}, expected {tuple(expected)}"
        )
    if not value.is_floating_point():  # index tables (DeepSeek-V4's tid2eid) keep their type
        dtype = value.dtype
    elif getattr(model, "keeps_fp32", None) and model.keeps_fp32(name):
        dtype = torch.float32  # what transformers keeps in fp32 whatever the model's dtype
    param = nn.Parameter(value.to(device=device, dtype=dtype), requires_grad=False)
    setattr(module, attr, param)


def parameter_names(model: nn.Module) -> set[str]:
    """Every parameter name of the model (the keys a checkpoint must provide)."""
    return {name for name, _ in model.named_parameters()}


def check_unexpected(names: Iterable[str], expected: set[str], ignorable: set[str], where: Path):
    """Raise UnsupportedModel for tensors the model has no place for (an unsupported variant)."""
    extra = sorted(n for n in names if n not in expected and n not in ignorable)
    if extra:
        shown = ", ".join(extra[:3]) + (f" (and {len(extra) - 3} more)" if len(extra) > 3 else "")
        raise UnsupportedModel(f"{where} has tensors this model does not use: {shown}")


def check_complete(model: nn.Module, where: Path) -> None:
    """Raise CorruptModelFile naming the parameters no file provided (still on meta)."""
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        )
        raise CorruptModelFile(f"{where} is missing tensors: {shown}; re-download the model")


def weights_id(files: Iterable[Path]) -> str:
    """sha256 over each file's name, size, first and last MiB: cheap even for 15 GB of weights."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            h.update(f.read(_EDGE_BYTES))
            if size > _EDGE_BYTES:
                f.seek(max(size - _EDGE_BYTES, _EDGE_BYTES))
                h.update(f.read(_EDGE_BYTES))
    return h.hexdigest()


def merge_ids(*groups: Iterable[int]) -> tuple[int, ...]:
    """Concatenate id lists keeping the first occurrence of each id."""
    out: dict[int, None] = {}
    for group in groups:
        out.update(dict.fromkeys(int(i) for i in group))
    return tuple(out)
