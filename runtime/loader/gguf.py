"""Load a GGUF file (llama, qwen2, qwen3, qwen3moe, gpt-oss, deepseek2: gguf_deepseek.py): config
from metadata, weights dequantized (MXFP4 experts included), or on the CPU with `native` its
Q4_0/Q4_1 linears packed.

Each tensor is dequantized with `gguf.quants.dequantize` (the same code transformers uses, so the
fp32 weights are identical), renamed to its Hugging Face name, un-permuted where llama.cpp's
converter permuted it, cast and assigned, one tensor at a time; a small thread pool overlaps the
numpy work of the next few tensors. Expert tensors (`blk.L.ffn_*_exps.*`) are stacked over
experts already; runtime/loader/experts.py places them.
"""

from __future__ import annotations

import mmap
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from gguf.quants import dequantize
from torch import nn

from runtime.config import FULL, SLIDING, ModelConfig, RopeScaling
from runtime.errors import CorruptModelFile, UnsupportedModel
from runtime.kernels.cpu_quant import GGUFEmbedding, Int4Linear, can_pack
from runtime.loader import gguf_deepseek
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
from runtime.loader.experts import ExpertTensors, is_expert_tensor
from runtime.loader.gguf_file import GGUFFile, TensorInfo, read_gguf

SUPPORTED_GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                        "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "deepseek2": "deepseek_v3"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",  # gpt-oss has no ffn_norm
}
_ROUTER = {"qwen3_moe": "mlp.gate", "gpt_oss": "mlp.router"}  # llama.cpp's ffn_gate_inp
_SINKS = re.compile(r"blk\.(\d+)\.attn_sinks\.weight")
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
ROPE_FREQS = "rope_freqs.weight"  # llama3-style per-frequency divisors, applied to the rotary
_PREFETCH = 4  # dequantized tensors in flight at most
_ROWS_PER_CHUNK = 4096  # a large table (the embedding) dequantizes this many rows at a time

T = TypeVar("T")
R = TypeVar("R")


def load_gguf(path: Path, dtype: torch.dtype, device: torch.device,
              native: bool = False) -> LoadedModel:
    """Read a GGUF file into our model; raises UnsupportedModel / CorruptModelFile.

    `native`: on the CPU, Q4_0/Q4_1 linears stay packed (runtime/kernels/cpu_quant.py) and
    compute with `dtype` (fp32 or bf16) activations; every other tensor is dequantized."""
    gf = read_gguf(path)
    cfg = gguf_model_config(gf)
    model = build_on_meta(cfg)
    experts = ExpertTensors(model, cfg, dtype, device)
    names = {name: hf_name(name, cfg.family) for name in gf.tensors if name != ROPE_FREQS}
    unknown = [name for name, hf in names.items() if hf is None and not is_expert_tensor(name)
               and not gguf_deepseek.is_kv_half(name)]
    expected = parameter_names(model)
    check_unexpected([*unknown, *(hf for hf in names.values() if hf)], expected, set(), path)
    infos = [gf.tensors[name] for name in names]
    native = native and device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
    packable = _packable_linears(model, gf, names) if native else set()

    def work(info: TensorInfo) -> torch.Tensor | Int4Linear:
        heads = _permuted_heads(info.name, cfg)
        if info.name in packable:
            return Int4Linear.from_blocks(_rows(gf, info, heads), info.qtype, dtype)
        if not heads and len(info.shape) == 2 and info.shape[0] > _ROWS_PER_CHUNK:
            return _dequantized_as(gf, info, dtype)
        return _dequantized(gf, info, heads)

    packed: dict[str, Int4Linear] = {}
    kv_b = gguf_deepseek.KvBJoiner(lambda n, w: assign_tensor(model, n, w, dtype, device))
    for info, weights in _prefetch(work, infos):
        if isinstance(weights, Int4Linear):
            packed[names[info.name].rpartition(".")[0]] = weights
        elif kv_b.take(info.name, weights):
            continue
        elif not experts.take_gguf(info.name, lambda w=weights: w):
            assign_tensor(model, names[info.name], weights, dtype, device)
    _install_packed(model, packed)
    kv_b.check_complete(path)
    experts.check_complete(path)
    check_complete(model, path)
    if ROPE_FREQS in gf.tensors:
        model.model.rotary.set_freq_factors(_dequantized(gf, gf.tensors[ROPE_FREQS]))
    if device.type == "cpu":
        _embedding_from_file(model, gf, dtype)
        # Every weight is a copy now (packed or dequantized): drop the file's pages from this
        # process (the page cache keeps them; embedding rows fault back in when read).
        gf.buf.madvise(mmap.MADV_DONTNEED)
    eos = merge_ids(cfg.eos_token_ids, _token_ids(gf.metadata, ("eot", "eom")))
    # Packed weights compute differently: their KV must never mix with the dequantized model's.
    wid = weights_id([path]) + (":int4-native" if packed else "")
    return LoadedModel(model, cfg, path, dtype, wid, eos)


def _packable_linears(model: nn.Module, gf: GGUFFile, names: dict[str, str | None]) -> set[str]:
    """GGUF names of the Linear weights that can stay packed (cpu_quant.can_pack)."""
    out = set()
    for name, hf in names.items():
        info = gf.tensors[name]
        if hf is None or not hf.endswith(".weight") or not can_pack(info.qtype, info.shape):
            continue
        if isinstance(model.get_submodule(hf.rpartition(".")[0]), nn.Linear):
            out.add(name)
    return out


def _embedding_from_file(model: nn.Module, gf: GGUFFile, dtype: torch.dtype) -> None:
    """A tied CPU model keeps one dense table, the head's: lookups read the file's rows.

    The head takes the loaded table as its weight (cpu_layout.py lays it out for the matmul);
    the embedding becomes a GGUFEmbedding over the same tensor's bytes."""
    decoder = getattr(model, "model", None)
    emb = getattr(decoder, "embed_tokens", None)
    if (getattr(model, "packed_head", False) is not None or not isinstance(emb, nn.Embedding)
            or "output.weight" in gf.tensors):
        return
    with torch.device("meta"):
        head = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
    head.weight = emb.weight
    model.packed_head = head
    info = gf.tensors["token_embd.weight"]
    decoder.embed_tokens = GGUFEmbedding(gf.raw(info), info.qtype, emb.embedding_dim, dtype)


def _install_packed(model: nn.Module, packed: dict[str, Int4Linear]) -> None:
    """Swap each Linear for its packed twin, keeping the bias the file gave it."""
    for module_name, linear in packed.items():
        parent_name, _, attr = module_name.rpartition(".")
        old = model.get_submodule(module_name)
        if old.bias is not None and not old.bias.is_meta:
            linear.bias = old.bias.data.to(linear.dtype)
        elif old.bias is not None:
            continue  # its bias is missing: check_complete names it
        setattr(model.get_submodule(parent_name), attr, linear)


def _rows(gf: GGUFFile, info: TensorInfo, unpermute_heads: int) -> np.ndarray:
    """A quantized tensor's raw bytes (rows, bytes per row), rows un-permuted when asked."""
    raw = gf.raw(info)
    return _unpermute(raw, unpermute_heads) if unpermute_heads else raw


def hf_name(gguf_name: str, family: str = "llama") -> str | None:
    """The Hugging Face parameter name of a llama.cpp tensor name, or None if unknown (and for
    stacked expert tensors, which have no single HF name)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if family == "deepseek_v3":
        return gguf_deepseek.block_name(gguf_name)
    if sink := _SINKS.fullmatch(gguf_name):
        return f"model.layers.{sink.group(1)}.self_attn.sinks"
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m is None:
        return None
    module = _ROUTER.get(family) if m.group(2) == "ffn_gate_inp" else _BLOCK_NAMES.get(m.group(2))
    if module is None:
        return None
    return f"model.layers.{m.group(1)}.{module}.{m.group(3)}"


def gguf_model_config(gf: GGUFFile) -> ModelConfig:
    """ModelConfig from GGUF metadata; shapes that metadata may omit come from the tensors."""
    meta = gf.metadata
    arch = meta.get("general.architecture")
    family = SUPPORTED_GGUF_ARCHS.get(str(arch))
    if family is None:
        names = ", ".join(sorted(SUPPORTED_GGUF_ARCHS))
        raise UnsupportedModel(f"unsupported GGUF architecture {arch!r}; supported: {names}")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise CorruptModelFile(f"{gf.path} lacks metadata {arch}.{key}; re-download it")
        return value

    heads = int(get("attention.head_count"))
    vocab, hidden = _shape_of(gf, "token_embd.weight")
    if family == "deepseek_v3":
        return gguf_deepseek.deepseek2_config(gf, get, _common_fields(gf, arch, get))
    moe = _moe_fields(gf, family, get)
    return ModelConfig(
        family=family,
        vocab_size=vocab,  # embedding rows: the tokenizer list may be shorter when padded
        hidden_size=hidden,
        intermediate_size=int(moe.pop("intermediate_size", None) or get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=_shape_of(gf, "blk.0.attn_q.weight")[0] // heads,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(meta, arch, truncate=family != "gpt_oss"),
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in gf.tensors,
        attention_bias="blk.0.attn_q.bias" in gf.tensors or family == "gpt_oss",
        qk_norm=family in ("qwen3", "qwen3_moe"),
        bos_token_id=_token_ids(meta, ("bos",))[0]
        if "tokenizer.ggml.bos_token_id" in meta
        else None,
        eos_token_ids=_token_ids(meta, ("eos",)),
        **moe,
    )


def _common_fields(gf: GGUFFile, arch: str, get: Callable[..., Any]) -> dict[str, Any]:
    """The ModelConfig fields every architecture reads the same way (for deepseek2)."""
    vocab, hidden = _shape_of(gf, "token_embd.weight")
    meta = gf.metadata
    return dict(
        vocab_size=vocab, hidden_size=hidden, num_heads=int(get("attention.head_count")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(meta, arch),
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in gf.tensors,
        bos_token_id=_token_ids(meta, ("bos",))[0] if "tokenizer.ggml.bos_token_id" in meta
        else None,
        eos_token_ids=_token_ids(meta, ("eos",)),
    )


def _moe_fields(gf: GGUFFile, family: str, get: Callable[..., Any]) -> dict[str, Any]:
    """Expert counts and attention variants from llama.cpp's metadata (its fixed choices where
    it has no key: Qwen3-MoE renormalises the top k; gpt-oss's SwiGLU is alpha 1.702, limit 7,
    its sliding layers are the even ones)."""
    if family not in ("qwen3_moe", "gpt_oss"):
        return {}
    layers = int(get("block_count"))
    fields: dict[str, Any] = {
        "num_experts": int(get("expert_count")),
        "num_experts_per_tok": int(get("expert_used_count")),
        "moe_intermediate_size": int(get("expert_feed_forward_length")),
        "mlp_only_layers": tuple(
            i for i in range(layers) if f"blk.{i}.ffn_gate_inp.weight" not in gf.tensors
        ),
    }
    if family == "qwen3_moe":
        fields["norm_topk_prob"] = bool(get("expert_weights_norm", True))
        return fields
    fields.update(
        intermediate_size=fields["moe_intermediate_size"],
        layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers)),
        sliding_window=int(get("attention.sliding_window", 128)),
        attention_sinks=True,
    )
    return fields


def _shape_of(gf: GGUFFile, name: str) -> tuple[int, ...]:
    info = gf.tensors.get(name)
    if info is None:
        raise CorruptModelFile(f"{gf.path} is missing tensor {name}; re-download it")
    return info.shape


def _rope_scaling(meta: dict[str, Any], arch: str, truncate: bool = True) -> RopeScaling:
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return RopeScaling()
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 1.0))
    if kind == "linear":
        return RopeScaling(type="linear", factor=factor)
    if kind == "yarn":
        orig = meta.get(f"{arch}.rope.scaling.original_context_length")
        return RopeScaling(
            type="yarn",
            factor=factor,
            original_max_position_embeddings=None if orig is None else int(orig),
            beta_fast=float(meta.get(f"{arch}.rope.scaling.yarn_beta_fast", 32.0)),
            beta_slow=float(meta.get(f"{arch}.rope.scaling.yarn_beta_slow", 1.0)),
            truncate=truncate,  # gpt-oss's yarn keeps the fractional correction range
            # DeepSeek: llama.cpp stores 0.1 * mscale_all_dim (mscale equal to it, as shipped)
            **_deepseek_mscale(meta.get(f"{arch}.rope.scaling.yarn_log_multiplier")),
        )
    raise UnsupportedModel(f"unsupported GGUF rope scaling {kind!r}; supported: none, linear, yarn")


def _deepseek_mscale(log_multiplier: float | None) -> dict[str, float]:
    if not log_multiplier:
        return {}
    m = float(log_multiplier) / 0.1
    return {"mscale": m, "mscale_all_dim": m}


def _token_ids(meta: dict[str, Any], kinds: Iterable[str]) -> tuple[int, ...]:
    keys = (f"tokenizer.ggml.{kind}_token_id" for kind in kinds)
    return tuple(int(meta[k]) for k in keys if k in meta)


def _dequantized(gf: GGUFFile, info: TensorInfo, unpermute_heads: int = 0) -> torch.Tensor:
    """fp32 weights of one tensor; rows un-permuted for `unpermute_heads` heads when nonzero."""
    try:
        weights = dequantize(gf.raw(info), info.qtype)
    except NotImplementedError as e:
        raise UnsupportedModel(f"{gf.path}: cannot dequantize {info.qtype.name} ({e})") from e
    if unpermute_heads:
        weights = _unpermute(weights, unpermute_heads)
    if not weights.flags.writeable:  # F32 tensors come back as views of the read-only mapping
        weights = np.array(weights)
    return torch.from_numpy(weights)


def _dequantized_as(gf: GGUFFile, info: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
    """A 2-D tensor dequantized into `dtype` a few thousand rows at a time: the same values as
    `_dequantized(...).to(dtype)` without the whole table in fp32 (113 MB for SmolLM2's)."""
    raw = gf.raw(info)
    out = torch.empty(info.shape, dtype=dtype)
    for start in range(0, info.shape[0], _ROWS_PER_CHUNK):
        rows = raw[start : start + _ROWS_PER_CHUNK]
        try:
            out[start : start + len(rows)] = torch.from_numpy(dequantize(rows, info.qtype))
        except NotImplementedError as e:
            raise UnsupportedModel(f"{gf.path}: cannot dequantize {info.qtype.name} ({e})") from e
    return out


def _permuted_heads(gguf_name: str, cfg: ModelConfig) -> int:
    """Heads of a q/k tensor llama.cpp permuted (llama architecture only), else 0."""
    if cfg.family != "llama":
        return 0
    if ".attn_q." in gguf_name:
        return cfg.num_heads
    return cfg.num_kv_heads if ".attn_k." in gguf_name else 0


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's q/k row permutation, as transformers' reverse_permute does."""
    half = w.shape[0] // n_head // 2
    # Rows ordered (head, half, pair) -> (head, pair, half). numpy: torch's copy of this layout
    # is two orders of magnitude slower on CPU.
    w = w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2)
    return np.ascontiguousarray(w).reshape(n_head * half * 2, *w.shape[3:])


def _prefetch(fn: Callable[[T], R], items: list[T]) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in order, up to _PREFETCH computed ahead on threads (numpy drops GIL)."""
    workers = max(1, min(_PREFETCH, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[tuple[T, Future[R]]] = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > _PREFETCH:
                done_item, fut = pending.popleft()
                yield done_item, fut.result()
        while pending:
            done_item, fut = pending.popleft()
            yield done_item, fut.result()
