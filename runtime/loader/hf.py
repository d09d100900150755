"""Load a Hugging Face folder: config.json and safetensors weights (one file or index shards).

Expert tensors of MoE checkpoints go through runtime/loader/experts.py (stacked, per expert,
or MXFP4 for gpt-oss, dequantized at load); block-scaled fp8 weights (DeepSeek) through
runtime/loader/fp8_blocks.py; DeepSeek-V4's own tensor names through deepseek_names.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from runtime.config import ModelConfig
from runtime.errors import CorruptModelFile, ModelNotFound, UnsupportedModel
from runtime.loader.common import (
    LoadedModel,
    assign_tensor,
    build_on_meta,
    check_complete,
    check_unexpected,
    merge_ids,
    parameter_names,
    weights_id,
)
from runtime.loader.deepseek_names import v4_name
from runtime.loader.experts import ExpertTensors
from runtime.loader.fp8_blocks import BlockScaledNames

INDEX_FILE = "model.safetensors.index.json"


def load_hf_folder(path: Path, dtype: torch.dtype, device: torch.device,
                   split: Callable[[ModelConfig], Any] | None = None) -> LoadedModel:
    """Build the model on meta, then stream each tensor from its file into place. `split`:
    a tensor-parallel rank's TensorSplit for the config; only its slices are read."""
    config_file = path / "config.json"
    raw = read_json(config_file)
    cfg = _model_config(raw, config_file)
    files = weight_files(path)
    model = build_on_meta(cfg)
    shard = split(cfg) if split is not None else None
    if shard is not None:
        shard.narrow(model)
    expected = parameter_names(model)
    experts = ExpertTensors(model, cfg, dtype, device)
    opts = _FileOptions(cfg.tie_word_embeddings, _block_size(raw),
                        v4_name if cfg.family == "deepseek_v4" else None, shard)
    for file in files:
        _load_file(model, file, expected, opts, experts, dtype, device)
    experts.check_complete(path)
    check_complete(model, path)
    eos = merge_ids(cfg.eos_token_ids, _generation_eos(path))
    wid = weights_id([*files, config_file])
    return LoadedModel(model, cfg, path, dtype, wid, eos)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file; CorruptModelFile naming it when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptModelFile(f"cannot read {path}: {e}; re-download the model") from e
    if not isinstance(data, dict):
        raise CorruptModelFile(f"{path} is not a JSON object; re-download the model")
    return data


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a folder: those an index names, else every *.safetensors."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptModelFile(f"{index} has no weight_map; re-download the model")
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CorruptModelFile(
                    f"{f} named in {INDEX_FILE} is missing; re-download the model"
                )
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UnsupportedModel(f"{path} has only PyTorch pickle weights; supported: *.safetensors")
    raise ModelNotFound(f"no *.safetensors weights in {path}; run `agent models pull NAME` again")


def _model_config(raw: dict[str, Any], config_file: Path) -> ModelConfig:
    # Variants the model definition does not implement: refuse rather than compute wrong logits.
    for option in ("mlp_bias", "use_sliding_window"):
        if raw.get(option):
            raise UnsupportedModel(f"{config_file} sets {option}, which is not supported")
    _check_quantization(raw, config_file)
    try:
        return ModelConfig.from_hf(raw)
    except KeyError as e:
        raise CorruptModelFile(f"{config_file} lacks {e}; re-download the model") from e


# quant_method -> the architectures whose checkpoints we can read with it.
SUPPORTED_QUANTIZATION = {"mxfp4": ("GptOssForCausalLM",),
                          "fp8": ("DeepseekV3ForCausalLM", "DeepseekV4ForCausalLM")}


@dataclass(frozen=True)
class _FileOptions:
    """How to read each file's tensors: a tied head, fp8 tiles, the family's names."""

    tied: bool
    block: tuple[int, int]
    rename: Callable[[str], str] | None
    shard: Any = None  # a TensorSplit: read only its slice of the tensors it splits


def _block_size(raw: dict[str, Any]) -> tuple[int, int]:
    quant = raw.get("quantization_config")
    size = (quant.get("weight_block_size") if isinstance(quant, dict) else None) or (128, 128)
    return int(size[0]), int(size[1])


def _check_quantization(raw: dict[str, Any], config_file: Path) -> None:
    quant = raw.get("quantization_config")
    if not quant:
        return
    method = quant.get("quant_method") if isinstance(quant, dict) else quant
    arch = (raw.get("architectures") or [None])[0]
    experts_fp4 = isinstance(quant, dict) and "fp4" in str(quant.get("expert_dtype", ""))
    if arch not in SUPPORTED_QUANTIZATION.get(str(method), ()) or experts_fp4:
        what = f"{method!r} with fp4 experts" if experts_fp4 else repr(method)
        raise UnsupportedModel(
            f"{config_file} is quantized with {what}, which is not supported for {arch}; "
            "supported: mxfp4 (gpt-oss experts), block-scaled fp8 (DeepSeek-V3/V4); "
            "use an unquantized (bf16) checkpoint"
        )


@contextmanager
def _open(file: Path):
    """safe_open with a truncated or garbled file reported as CorruptModelFile naming it."""
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise CorruptModelFile(f"cannot read {file}: {e}; re-download it") from e
    with handle as f:
        yield f


def _load_file(model, file: Path, expected: set[str], opts: _FileOptions,
               experts: ExpertTensors, dtype, device) -> None:
    with _open(file) as f:
        stored = list(f.keys())
        scaled = BlockScaledNames(stored)
        rename = opts.rename or (lambda n: n)
        theirs = {rename(n): n for n in stored if not scaled.is_scale(n)}  # our name -> stored
        names = list(theirs)
        # Old checkpoints store rotary buffers; tied ones sometimes still store the head.
        ignorable = {n for n in names if n.endswith("rotary_emb.inv_freq") or experts.claims(n)}
        if opts.tied:
            ignorable.add("lm_head.weight")
        check_unexpected(names, expected, ignorable, file)

        def read(name: str) -> torch.Tensor:
            return scaled.read(theirs[name], lambda n: _tensor(f, n, file, opts.shard),
                               opts.block)

        for name in names:
            if experts.take(name, lambda name=name: read(name)):
                continue
            if name in expected:
                assign_tensor(model, name, read(name), dtype, device)


def _tensor(f, name: str, file: Path, shard=None) -> torch.Tensor:
    try:
        if shard is not None and shard.slice_of(name) is not None:
            return shard.read(f, name)
        return f.get_tensor(name)
    except (SafetensorError, OSError) as e:
        raise CorruptModelFile(f"cannot read tensor {name} from {file}: {e}; re-download it") from e


def _generation_eos(path: Path) -> list[int]:
    """eos ids from generation_config.json (an int or a list), when present."""
    file = path / "generation_config.json"
    if not file.is_file():
        return []
    eos = read_json(file).get("eos_token_id")
    if eos is None:
        return []
    return list(eos) if isinstance(eos, list) else [eos]
