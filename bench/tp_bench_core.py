"""What bench/tp_decode.py and bench/cp_prefill.py share: model folders of real shapes with
random weights (tests/model_folder.py), opening a split model, timing prefill and decode,
and the bounds a run is held against."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from runtime.engine.sampling import SamplingParams
from runtime.local_model import LocalModel, RuntimeOptions
from tests.model_folder import QWEN25_7B_1M, Shape, write_model_folder

QWEN25_32B = Shape(layers=64, hidden=5120, heads=40, kv_heads=8, head_dim=128, ffn=27648,
                   vocab=152064, window=131072, rope_theta=1_000_000.0)
TINY = Shape(layers=2, hidden=64, heads=8, kv_heads=4, head_dim=16, ffn=128, vocab=8203,
             window=8192, rope_theta=1e4)  # a smoke run of the benchmarks on the CPU
SHAPES = {"qwen2.5-32b": QWEN25_32B, "qwen2.5-7b": QWEN25_7B_1M, "tiny": TINY}
MATMUL_TFLOPS = 760.0  # one H200, bf16 (docs/ARCHITECTURE.md)
HBM_TBPS = 4.2  # one H200, copy (read + write); a read-only stream is a little faster


def folder(root: Path, name: str) -> Path:
    """The random-weights folder of shape `name` under `root` (written once, ~2 bytes/param)."""
    return write_model_folder(root / name, SHAPES[name], device=DEVICE)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"


def open_split(path: Path, tp: int, **options) -> LocalModel:
    dtype = "bf16" if DEVICE == "cuda" else "fp32"
    return LocalModel.open(str(path), RuntimeOptions(dtype=dtype, tensor_parallel=tp,
                                                     prefix_cache=False, **options))


def close(model: LocalModel) -> None:
    """Close (ending the rank processes) and give rank 0's GPU memory back."""
    model.close()
    del model
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def prompt(n: int, vocab: int = 8192, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (n,), generator=g).tolist()


def timed_prefill(model: LocalModel, n: int) -> tuple[object, float]:
    """A fresh sequence of `n` tokens prefilled; (sequence, seconds)."""
    engine = model.engine
    seq = engine.new_sequence()
    sync()
    start = time.perf_counter()
    engine.extend(seq, prompt(n))
    sync()
    return seq, time.perf_counter() - start


def decode_ms(model: LocalModel, seq, tokens: int) -> float:
    """Steady batch-1 decode: ms per token after the first two (graphs captured by then)."""
    stamps = []
    for _ in model.engine.generate(seq, SamplingParams(max_tokens=tokens, ignore_eos=True)):
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[2]) / (len(stamps) - 3) * 1e3


def params_linear(s: Shape) -> int:
    """Weights every token multiplies by (the head included, the embedding not)."""
    attn = s.hidden * (s.heads + 2 * s.kv_heads) * s.head_dim + s.heads * s.head_dim * s.hidden
    return s.layers * (attn + 3 * s.hidden * s.ffn) + s.vocab * s.hidden


def prefill_bound_s(s: Shape, tokens: int, gpus: int) -> float:
    """Matmul FLOPs (projections and causal attention) over `gpus` at the matmul rate."""
    attn = 2 * s.layers * s.heads * s.head_dim * tokens * tokens  # QK^T and PV, causal half
    return (2 * params_linear(s) * tokens + attn) / gpus / (MATMUL_TFLOPS * 1e12)


def decode_bound_ms(s: Shape, context: int, gpus: int) -> float:
    """Bytes one decode step reads (bf16 weights and the context's KV) over `gpus`."""
    kv = 2 * s.layers * s.kv_heads * s.head_dim * 2 * context
    return (2 * params_linear(s) + kv) / gpus / (HBM_TBPS * 1e12) * 1e3


def write(path: Path | None, report: dict) -> None:
    text = json.dumps(report, indent=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text, flush=True)
