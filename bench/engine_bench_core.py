"""Shared pieces of bench/gpu_engine.py: shapes, timing, the engine, ceilings."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.hashing import model_fingerprint  # noqa: E402
from memory.kv_cache import TieredKVCache  # noqa: E402
from memory.kv_layout import KVLayout  # noqa: E402
from runtime.config import ModelConfig  # noqa: E402
from runtime.engine.engine import Engine, EngineConfig  # noqa: E402
from runtime.engine.scheduler import Scheduler  # noqa: E402
from runtime.engine.sequence import Sequence  # noqa: E402
from runtime.kernels.triton_backend import TritonBackend  # noqa: E402
from runtime.models import build_model  # noqa: E402

K = 1024
M = 1 << 20
PAGE = 256
GOALS = {  # from the issues: seconds (lower is better) or tokens/s (higher is better)
    "prefill_128k_s": 10.0,
    "follow_up_ttft_s": 1.8,
    "decode_1k_tok_s": 250.0,
    "decode_128k_tok_s": 165.0,
    "decode_1m_tok_s": 48.0,
    "restore_fraction_of_copy": 0.8,
    "write_through_slowdown": 0.05,
    "extend_1m_tflops": 400.0,
    "decode_attention_1m_tbps": 3.5,
}


def qwen25_7b(max_context: int) -> ModelConfig:
    return ModelConfig(family="qwen2", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                       head_dim=128, max_position_embeddings=max_context, rope_theta=1e6,
                       attention_bias=True)  # fmt: skip


def tiny(max_context: int) -> ModelConfig:
    """A CPU smoke-test shape (--tiny): checks the script, not the numbers."""
    return ModelConfig(family="qwen2", vocab_size=512, hidden_size=128, intermediate_size=256,
                       num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                       max_position_embeddings=max_context, rope_theta=1e6,
                       attention_bias=True)  # fmt: skip


# -- timing ----------------------------------------------------------------------------------------


class Bench:
    """Shared state: device, results (saved after every part), and the sizes in use."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.res: dict = {"errors": {}, "notes": []}
        self.t0 = time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def timed(self, fn: Callable[[], object]) -> tuple[float, object]:
        """Wall seconds of fn with the device drained before and after (host work included)."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def event_ms(self, fn: Callable[[], object], reps: int = 5) -> float:
        """Median device milliseconds of fn over reps (after one warm-up)."""
        fn()
        times = []
        for _ in range(reps):
            if not self.cuda:
                times.append(self.timed(fn)[0] * 1e3)
                continue
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return float(np.median(times))

    def wants(self, name: str) -> bool:
        """Whether to run a part: asked for, and time left in the budget."""
        if name not in self.args.parts.split(","):
            return False
        if time.perf_counter() - self.t0 > self.args.budget_s:
            self.res["notes"].append(f"{name} skipped: past the {self.args.budget_s} s budget")
            return False
        return True

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[dict]:
        """A section of results; an exception is recorded and the script goes on."""
        out = self.res.setdefault(name, {})
        start = time.perf_counter()
        print(f"== {name} (t={start - self.t0:.0f}s)", flush=True)
        try:
            yield out
        except Exception as e:
            self.res["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            traceback.print_exc()
        finally:
            out["part_seconds"] = round(time.perf_counter() - start, 2)
            self.save()

    def save(self) -> None:
        if self.args.out:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(json.dumps(self.res, indent=2, default=str) + "\n")

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def rand_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = np.random.default_rng(seed)
    return g.integers(0, vocab, n).tolist()


# -- the model, the engine ---------------------------------------------------------------------


def build(b: Bench, cfg: ModelConfig) -> torch.nn.Module:
    """Random weights straight on the device: meta build, bf16, to_empty, init in place."""
    with torch.device("meta"):
        model = build_model(cfg)
    model = model.to(dtype=b.dtype).to_empty(device=b.dev)
    gen = torch.Generator(device=b.dev).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every weight but the embedding table (one row of it)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.model.embed_tokens.weight
    return total - emb.numel() * emb.element_size()


def linear_flops_per_token(cfg: ModelConfig) -> float:
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd
    per_layer = qkv + cfg.num_heads * hd * h + 3 * h * i
    return 2.0 * per_layer * cfg.num_layers  # the lm_head runs for one row per chunk only


def attention_flops(cfg: ModelConfig, q_len: int, kv_len: int) -> float:
    """QK^T and PV over the keys each new query sees (end-aligned causal)."""
    seen = q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2
    return 4.0 * seen * cfg.head_dim * cfg.num_heads * cfg.num_layers


def layout_of(b: Bench, cfg: ModelConfig) -> KVLayout:
    return KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, b.args.page, b.dtype)


def make_engine(b: Bench, model, cfg: ModelConfig, device_pages: int, host_pages: int,
                chunk: int, disk_dir: Path | None = None) -> Engine:  # fmt: skip
    layout = layout_of(b, cfg)
    fp = model_fingerprint("random-qwen2.5-7b-shape", b.dtype, layout, "default:1e6", 1)
    kv = TieredKVCache(layout, device_pages, host_pages, fp, disk_dir=disk_dir, device=b.dev)
    backend = TritonBackend() if b.cuda else _cpu_backend()
    return Engine(model, kv, backend, max_context=cfg.max_position_embeddings, device=b.dev,
                  config=EngineConfig(prefill_chunk=chunk, max_batch_tokens=chunk))  # fmt: skip


def _cpu_backend():
    from runtime.kernels.torch_ref import TorchReferenceBackend

    return TorchReferenceBackend()


def set_chunk(engine: Engine, chunk: int) -> None:
    engine.scheduler = Scheduler(chunk, chunk)


def prefill(b: Bench, engine: Engine, ids: list[int]) -> tuple[float, Sequence]:
    seq = engine.new_sequence()
    took, _ = b.timed(lambda: engine.extend(seq, ids))
    return took, seq


def drop_engine(b: Bench, engine: Engine) -> None:
    """Free the engine's memory (pool, pinned host slots, graphs) before the next one is built;
    the hollow engine must not be used again."""
    with contextlib.suppress(Exception):
        engine.kv.close()
    engine.runner = engine.kv = None  # the pool's only owners (with the graphs in the runner)
    b.free()
    if b.cuda:
        with contextlib.suppress(Exception):
            torch._C._host_emptyCache()  # pinned host blocks stay cached otherwise


def copy_tbps(b: Bench, n: int) -> float:
    """TB/s of a device copy of n bf16 values, bytes read plus written."""
    src = torch.empty(n, dtype=torch.bfloat16, device=b.dev).normal_()
    dst = torch.empty_like(src)
    return 2 * n * 2 / b.event_ms(lambda: dst.copy_(src), reps=10) / 1e9


def matmul_tflops(b: Bench, s: int) -> float:
    """TFLOP/s of an s x s x s product on random data."""
    x = torch.randn(s, s, dtype=b.dtype, device=b.dev)
    w = torch.randn(s, s, dtype=b.dtype, device=b.dev)
    return 2 * s**3 / b.event_ms(lambda: x @ w, reps=10) / 1e9


def pinned_h2d_gbps(b: Bench, nbytes: int, host: torch.Tensor | None = None) -> float:
    """GB/s of one pinned host -> device copy of nbytes (median of 3)."""
    if host is None:
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=b.cuda).fill_(7)
    dev = torch.empty(host.shape, dtype=host.dtype, device=b.dev)
    ms = b.event_ms(lambda: dev.copy_(host, non_blocking=True), reps=3)
    return host.numel() * host.element_size() / ms / 1e6
