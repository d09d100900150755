"""The engine end to end on one GPU at Qwen2.5-7B's shape, against its bounds and transformers.

Random bf16 weights of Qwen2.5-7B's shape (built on the meta device, materialised on the GPU),
256-token KV pages, the Triton backend. Parts (each runs on if another fails; the JSON is
rewritten after each):

- ceilings: device copy bandwidth (read + write), bf16 matmul rate, pinned host -> device copy.
- hf: transformers Qwen2ForCausalLM (SDPA) sharing our weight tensors: logits parity at 1K, a
  128K prefill in 8K chunks with its DynamicCache, decode at 128K.
- prefill: 128K tokens through `engine.extend`, chunks of 8K and 16K; bound = FLOPs / matmul.
- decode: batch 1 at ~1K and 128K (and batch 8 / 32 at 1K), with CUDA graphs and eagerly;
  bound = (weight bytes + KV bytes of the context) / copy bandwidth; a kernel breakdown of one
  step from the profiler; greedy tokens of graph versus eager decoding.
- long: 2,048 new tokens on 1M resident tokens (time to first token) and decode at 1M. The 1M
  resident tokens are NOT prefilled (minutes): their pages are allocated, filled with random
  bf16 and sealed under the chain hashes of 1M random token ids, and the sequence is marked
  computed. Attention reads those pages exactly as it would read computed ones.
- restore (issue 3): 128K tokens written through to a disk tier; resumed from host memory and,
  in a new cache over the same directory with the OS page cache dropped, from disk; compared
  with a pinned copy and a plain sequential read of the same bytes, and with re-prefill; and
  the cost of write-through (prefill with the disk tier on versus off).

    python bench/gpu_engine.py --out bench/results/gpu_engine_h200.json --plot gpu_engine.png

Imports only torch, numpy and triton from the runtime (transformers for the `hf` part).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
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
from runtime.engine.sampling import SamplingParams  # noqa: E402
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


# -- parts ---------------------------------------------------------------------------------------


def part_ceilings(b: Bench, out: dict) -> None:
    out["copy_TBps"] = copy_tbps(b, (1 << 30) if b.cuda else (1 << 24))
    out["matmul_TFLOPs"] = matmul_tflops(b, 8192 if b.cuda else 512)
    out["h2d_pinned_GBps"] = pinned_h2d_gbps(b, (2 << 30) if b.cuda else (1 << 24))
    b.free()
    b.copy_bw = out["copy_TBps"] * 1e12
    b.mm_rate = out["matmul_TFLOPs"] * 1e12
    print(f"  copy {out['copy_TBps']:.2f} TB/s, matmul {out['matmul_TFLOPs']:.0f} TFLOP/s, "
          f"H2D pinned {out['h2d_pinned_GBps']:.1f} GB/s", flush=True)  # fmt: skip


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


def part_hf(b: Bench, out: dict, model, cfg: ModelConfig) -> None:
    """transformers on our very tensors (no copy): parity, 128K prefill, decode at 128K."""
    hf = hf_model(model, cfg, b.dev)
    out["transformers"] = __import__("transformers").__version__
    out["parity_rel_err_1k"] = hf_parity(b, hf, model, cfg)
    print(f"  parity at 1K: rel err {out['parity_rel_err_1k']:.2e}", flush=True)
    chunk = b.args.hf_chunk
    for n in (b.args.long // 4, b.args.long):
        ids = torch.tensor([rand_ids(n, cfg.vocab_size, seed=n)], device=b.dev)
        took, cache = b.timed(lambda ids=ids: hf_prefill(hf, ids, chunk))
        out[f"prefill_{n // K}k_s"] = took
        print(f"  HF prefill {n // K}K ({chunk // K}K chunks): {took:.2f} s", flush=True)
        if took > b.args.hf_max_s:  # 128K would take ~16x this: keep the device time
            b.res["notes"].append(f"transformers stopped after {n} tokens ({took:.1f} s)")
            return
    out["decode_128k_ms"] = hf_decode_ms(b, hf, cache, ids, n=b.args.hf_decode_tokens)
    print(f"  HF decode at {n // K}K: {out['decode_128k_ms']:.1f} ms/token", flush=True)


def hf_model(model, cfg: ModelConfig, dev: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    hc = Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                     intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                     max_position_embeddings=cfg.max_position_embeddings,
                     rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                     tie_word_embeddings=False, use_sliding_window=False,
                     attn_implementation="sdpa")  # fmt: skip
    with torch.device("meta"):
        hf = Qwen2ForCausalLM(hc)
    hf.load_state_dict(model.state_dict(), assign=True, strict=True)  # shares the tensors
    hf.model.rotary_emb = Qwen2RotaryEmbedding(config=hc).to(dev)  # its buffers were on meta
    return hf.eval()


def _cache_kwarg(hf) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _new_cache(hf):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=hf.config)
    except TypeError:
        return DynamicCache()


@torch.inference_mode()
def hf_prefill(hf, ids: torch.Tensor, chunk: int):
    cache, kw = _new_cache(hf), _cache_kwarg(hf)
    for i in range(0, ids.shape[1], chunk):
        hf(input_ids=ids[:, i : i + chunk], use_cache=True, logits_to_keep=1, **{kw: cache})
    return cache


@torch.inference_mode()
def hf_decode_ms(b: Bench, hf, cache, ids: torch.Tensor, n: int) -> float:
    kw = _cache_kwarg(hf)
    tok = ids[:, -1:]
    steps = []
    for i in range(n + 2):
        start = time.perf_counter()
        logits = hf(input_ids=tok, use_cache=True, logits_to_keep=1, **{kw: cache}).logits
        tok = logits[:, -1].argmax(-1, keepdim=True)
        tok.item()  # the host needs the token, as generate does
        if i >= 2:
            steps.append(time.perf_counter() - start)
    return float(np.median(steps)) * 1e3


@torch.inference_mode()
def hf_parity(b: Bench, hf, model, cfg: ModelConfig) -> float:
    ids = rand_ids(K, cfg.vocab_size, seed=1)
    ref = hf(input_ids=torch.tensor([ids], device=b.dev), logits_to_keep=1).logits[0, -1].float()
    engine = make_engine(b, model, cfg, -(-K // b.args.page) + 2, host_pages=1, chunk=512)
    seq = engine.new_sequence()
    engine.extend(seq, ids)
    got = seq.last_logits
    err = ((got - ref).norm() / ref.norm()).item()
    drop_engine(b, engine)
    return err


def part_prefill(b: Bench, out: dict, engine: Engine, cfg: ModelConfig) -> Sequence:
    """128K prefill at each chunk size; returns the last run's sequence (kept for decode)."""
    n = b.args.long
    set_chunk(engine, b.args.chunks[0])
    warm, seq = prefill(b, engine, rand_ids(b.args.chunks[-1] * 2, cfg.vocab_size, seed=2))
    engine.release(seq)
    out["warmup_s"] = warm
    flops = linear_flops_per_token(cfg) * n + attention_flops(cfg, n, n)
    out["flops"] = flops
    out["bound_s"] = flops / b.mm_rate
    seq = None
    for chunk in b.args.chunks:
        if seq is not None:
            engine.release(seq)
        set_chunk(engine, chunk)
        took, seq = prefill(b, engine, rand_ids(n, cfg.vocab_size, seed=100 + chunk))
        out[f"chunk_{chunk // K}k_s"] = took
        print(f"  prefill {n // K}K, {chunk // K}K chunks: {took:.2f} s "
              f"({flops / took / 1e12:.0f} TFLOP/s; bound {out['bound_s']:.2f} s)",
              flush=True)  # fmt: skip
    best = min(b.args.chunks, key=lambda c: out[f"chunk_{c // K}k_s"])
    out["best_chunk"] = best
    out["measured_s"] = out[f"chunk_{best // K}k_s"]
    b.best_chunk = best
    set_chunk(engine, best)
    if b.cuda:  # where the time goes, from one more (profiled, so slower) run
        ids = rand_ids(n, cfg.vocab_size, seed=99)
        prof = profile_forwards(b, lambda: engine.release(prefill(b, engine, ids)[1]))
        out["profile_whole_prefill"] = {k: v for k, v in prof.items() if k != "forwards"}
        out["profile_whole_prefill"]["chunks"] = prof["forwards"]
    return seq


def decode_tok_s(b: Bench, engine: Engine, seq: Sequence, n: int) -> tuple[float, list[int]]:
    """Steady-state tokens/s of greedy batch-1 decode, and the n tokens.

    The first token comes from the prefill's logits and the forward after it is drained before
    the clock starts; the last token needs no forward: n - 2 forwards are timed.
    """
    it = engine.generate(seq, SamplingParams(max_tokens=n, ignore_eos=True))
    tokens = [next(it).token_id]
    took, rest = b.timed(lambda: [e.token_id for e in it])
    return (len(rest) - 1) / took, tokens + rest


@contextlib.contextmanager
def forked(engine: Engine, seq: Sequence) -> Iterator[Sequence]:
    """A fork of seq, released afterwards (pages leaked here would starve the 1M part)."""
    child = engine.fork(seq)
    try:
        yield child
    finally:
        engine.release(child)


def eager(engine: Engine):
    """A context in which the engine decodes without graphs."""

    @contextlib.contextmanager
    def ctx():
        graphs, engine.runner.graphs = engine.runner.graphs, None
        try:
            yield
        finally:
            engine.runner.graphs = graphs

    return ctx()


def decode_point(b: Bench, engine: Engine, seq: Sequence, ctx_len: int, n: int,
                 n_eager: int, wbytes: int, kv_tok: int) -> dict:  # fmt: skip
    graph, _ = decode_tok_s(b, engine, seq, n)
    with eager(engine):
        slow, _ = decode_tok_s(b, engine, seq, n_eager)
    bound = b.copy_bw / (wbytes + ctx_len * kv_tok)
    bound_nominal = 4.2e12 / (wbytes + ctx_len * kv_tok)
    print(f"  decode b1 at {ctx_len // K}K: graphs {graph:.1f} tok/s, eager {slow:.1f}, "
          f"bound {bound:.1f} (4.2 TB/s: {bound_nominal:.1f})", flush=True)  # fmt: skip
    return {"context": ctx_len, "graph_tok_s": graph, "eager_tok_s": slow, "bound_tok_s": bound,
            "bound_tok_s_4p2TBps": bound_nominal, "fraction_of_bound": graph / bound}  # fmt: skip


def part_decode(b: Bench, out: dict, engine: Engine, cfg: ModelConfig, seq_long: Sequence,
                model) -> None:  # fmt: skip
    graphs = engine.runner.graphs
    wbytes, kv_tok = weight_bytes(model), layout_of(b, cfg).bytes_per_token
    out["weight_bytes"], out["kv_bytes_per_token"] = wbytes, kv_tok
    if graphs is not None:
        took, _ = b.timed(graphs.capture)
        out["capture_all_s"], out["buckets"] = took, list(graphs.buckets)
        print(f"  captured buckets {graphs.buckets} in {took:.1f} s", flush=True)
    short = engine.new_sequence()
    engine.extend(short, rand_ids(K, cfg.vocab_size, seed=3))
    with forked(engine, short) as s:
        decode_tok_s(b, engine, s, 8)  # warm-up
    with forked(engine, short) as s:
        out["b1_1k"] = decode_point(b, engine, s, K, b.args.decode_tokens, 32, wbytes, kv_tok)
    out["graph_vs_eager_tokens"] = graph_vs_eager(b, engine, short)
    out["breakdown"] = with_breakdown(b, engine, short)
    for batch in b.args.batches:
        out[f"b{batch}_1k_tok_s"] = batch_tok_s(b, engine, cfg, batch)
    runs = [follow_up(b, engine, seq_long, cfg, seed=4 + i) for i in range(2)]
    out["follow_up_2k_on_128k_runs_s"] = runs  # the first may compile a kernel variant
    out["b1_128k"] = decode_point(b, engine, seq_long, len(seq_long), b.args.decode_tokens // 2,
                                  16, wbytes, kv_tok)  # fmt: skip
    if b.cuda:
        out["breakdown_128k_graph"] = profile_forwards(
            b, lambda: decode_tok_s(b, engine, seq_long, 6)
        )
    engine.release(short)


def graph_vs_eager(b: Bench, engine: Engine, seq: Sequence, n: int = 64) -> dict:
    """Greedy tokens from one state, graphs versus eager (split counts differ: see notes)."""
    with forked(engine, seq) as s:
        _, with_graphs = decode_tok_s(b, engine, s, n)
    with eager(engine), forked(engine, seq) as s:
        _, without = decode_tok_s(b, engine, s, n)
    same = next((i for i, (x, y) in enumerate(zip(with_graphs, without)) if x != y), n)
    return {"tokens": n, "identical_prefix": same}


def batch_tok_s(b: Bench, engine: Engine, cfg: ModelConfig, batch: int, n: int = 64) -> float:
    seqs = [engine.new_sequence() for _ in range(batch)]
    for i, s in enumerate(seqs):
        engine.extend(s, rand_ids(K, cfg.vocab_size, seed=1000 + i))
    params = [SamplingParams(max_tokens=n, ignore_eos=True)] * batch
    took, _ = b.timed(lambda: engine.generate_batch(seqs, params))
    for s in seqs:
        engine.release(s)
    rate = batch * (n - 1) / took
    print(f"  decode b{batch} at 1K: {rate:.0f} tok/s", flush=True)
    return rate


def with_breakdown(b: Bench, engine: Engine, seq: Sequence) -> dict:
    """Kernels of 4 decode steps, graph and eager, from the profiler (GPU time by kind)."""
    if not b.cuda:
        return {}
    out = {}
    for name in ("graph", "eager"):
        with contextlib.ExitStack() as stack:
            if name == "eager":
                stack.enter_context(eager(engine))
            with forked(engine, seq) as s:
                decode_tok_s(b, engine, s, 4)  # warm
            s = stack.enter_context(forked(engine, seq))
            out[name] = profile_forwards(b, lambda s=s: decode_tok_s(b, engine, s, 6))
    return out


def profile_forwards(b: Bench, fn: Callable[[], object]) -> dict:
    """GPU time and kernel count by kind, per forward (counted by the KV store launches)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if us:
            events.append((us / 1e3, ev.count, ev.key))
    stores = sum(c for _, c, k in events if "_store_kv" in k)
    steps = max(1, round(stores / b.layers))
    kinds: dict[str, list[float]] = {}
    for ms, count, key in events:
        kind = kinds.setdefault(_kind(key), [0.0, 0.0])
        kind[0] += ms / steps
        kind[1] += count / steps
    top = sorted(((round(ms / steps, 4), round(c / steps, 1), k[:90]) for ms, c, k in events),
                 reverse=True)[:15]  # fmt: skip
    return {"forwards": steps, "wall_ms_per_forward": wall / steps * 1e3,
            "per_forward": {k: {"ms": round(v[0], 3), "kernels": round(v[1], 1)}
                            for k, v in kinds.items()},
            "kernels_per_forward": round(sum(v[1] for v in kinds.values()), 1),
            "gpu_ms_per_forward": round(sum(v[0] for v in kinds.values()), 3),
            "top_ms_count_name": top}  # fmt: skip


def _kind(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "gemv", "cutlass", "nvjet", "xmma", "cublas", "splitk")):
        return "matmul"
    if any(k in low for k in ("_decode_kernel", "_merge_kernel", "_extend_kernel")):
        return "attention"
    if "_store_kv" in low:
        return "kv_store"
    if "memcpy" in low or "memset" in low:
        return "copies"
    return "elementwise/other"


def follow_up(b: Bench, engine: Engine, seq: Sequence, cfg: ModelConfig, seed: int) -> float:
    """Seconds to extend seq by 2,048 tokens and sample the first token; seq is left as it was."""
    base = len(seq)
    ids = rand_ids(b.args.follow_up, cfg.vocab_size, seed=seed)

    def turn() -> int:
        engine.extend(seq, ids)
        return int(seq.last_logits.argmax())

    took, _ = b.timed(turn)
    engine.truncate(seq, base)
    print(f"  follow-up {len(ids)} on {base // K}K: {took:.3f} s", flush=True)
    return took


def fill_resident(b: Bench, engine: Engine, cfg: ModelConfig, n: int) -> Sequence:
    """A sequence of n resident tokens without prefilling them (see the module doc)."""
    kv, p = engine.kv, b.args.page
    seq = engine.new_sequence()
    seq.tokens = rand_ids(n, cfg.vocab_size, seed=5)
    pages = kv.alloc(n // p)
    gen = torch.Generator(device=b.dev).manual_seed(5)
    for i in range(0, len(pages), 64):
        idx = torch.tensor(pages[i : i + 64], device=b.dev)
        block = torch.empty((len(idx), *kv.layout.page_shape), dtype=b.dtype, device=b.dev)
        kv.pool.data[idx] = block.normal_(generator=gen)
    seq.table.append(pages)
    seq.hashes = kv.page_hashes(seq.tokens)
    for i, h in enumerate(seq.hashes):
        assert kv.seal(pages[i], h) == pages[i], "a fresh chain hash found a cached page"
    seq.num_computed = n
    b.sync()
    return seq


def part_long(b: Bench, out: dict, engine: Engine, cfg: ModelConfig, model) -> None:
    n = b.args.resident
    took, seq = b.timed(lambda: fill_resident(b, engine, cfg, n))
    out["fill_s"], out["resident_tokens"] = took, n
    attn = attention_flops(cfg, b.args.follow_up, n + b.args.follow_up)
    flops = attn + linear_flops_per_token(cfg) * b.args.follow_up
    out["follow_up_flops"], out["follow_up_bound_s"] = flops, flops / b.mm_rate
    runs = [follow_up(b, engine, seq, cfg, seed=6 + i) for i in range(2)]
    out["follow_up_runs_s"], out["follow_up_ttft_s"] = runs, min(runs)
    out["follow_up_attention_TFLOPs"] = attn / min(runs) / 1e12
    engine.extend(seq, rand_ids(b.args.follow_up, cfg.vocab_size, seed=9))
    wbytes, kv_tok = weight_bytes(model), layout_of(b, cfg).bytes_per_token
    out["b1_1m"] = decode_point(b, engine, seq, len(seq), b.args.decode_tokens // 4, 16, wbytes,
                                kv_tok)  # fmt: skip
    out["b1_1m_graph_again_tok_s"], _ = decode_tok_s(b, engine, seq, b.args.decode_tokens // 4)
    if b.cuda:
        out["breakdown_1m_graph"] = profile_forwards(b, lambda: decode_tok_s(b, engine, seq, 6))
    engine.release(seq)


def part_restore(b: Bench, out: dict, model, cfg: ModelConfig, disk: Path) -> None:
    """Issue 3: write-through cost, resume from host, resume from disk (cold) vs re-prefill."""
    n, chunk = b.args.long, b.best_chunk
    pages = -(-n // b.args.page) + 8
    ids = rand_ids(n, cfg.vocab_size, seed=7)
    off = make_engine(b, model, cfg, pages, 1, chunk)
    _, warm = prefill(b, off, rand_ids(n // 8, cfg.vocab_size, seed=8))  # warm the engine
    off.release(warm)
    out["prefill_disk_off_s"], _ = prefill(b, off, rand_ids(n, cfg.vocab_size, seed=10))
    drop_engine(b, off)
    on = make_engine(b, model, cfg, pages, pages, chunk, disk_dir=disk)
    out["prefill_disk_on_s"], seq = prefill(b, on, ids)
    out["flush_after_prefill_s"], _ = b.timed(on.kv.flush)
    out["write_through_slowdown"] = out["prefill_disk_on_s"] / out["prefill_disk_off_s"] - 1
    print(f"  prefill {n // K}K: disk off {out['prefill_disk_off_s']:.2f} s, on "
          f"{out['prefill_disk_on_s']:.2f} s (+{out['flush_after_prefill_s']:.2f} s flush)",
          flush=True)  # fmt: skip
    out["host"] = restore_from_host(b, on, seq, ids)
    drop_engine(b, on)
    out["disk"] = restore_from_disk(b, model, cfg, disk, ids, pages, chunk)


def restore_from_host(b: Bench, engine: Engine, seq: Sequence, ids: list[int]) -> dict:
    kv = engine.kv
    engine.release(seq)
    kv.evict_all_to_host()
    n_pages = (len(ids) - 1) // b.args.page
    nbytes = n_pages * kv.layout.page_bytes
    gbps = pinned_h2d_gbps(b, nbytes, host=kv.host.data[:n_pages])
    hashes = kv.page_hashes(ids)[:n_pages]
    acquire_s, got = b.timed(lambda: kv.acquire(hashes))
    kv.release(got.pages)
    kv.evict_all_to_host()
    extend_runs = []
    for _ in range(2):  # the first may compile an extend variant (256 queries over 128K keys)
        took, (fresh, r) = b.timed(lambda: _extend_new(engine, ids))
        extend_runs.append(took)
        engine.release(fresh)
        kv.evict_all_to_host()
    extend_s = min(extend_runs)
    bound = nbytes / (gbps * 1e9)
    res = {"bytes": nbytes, "h2d_pinned_GBps": gbps, "copy_bound_s": bound,
           "acquire_s": acquire_s, "extend_s": extend_s, "extend_runs_s": extend_runs,
           "cached_by_tier": r.cached_by_tier,
           "computed_tokens": r.computed_tokens, "fraction_of_copy": bound / acquire_s,
           "fraction_of_copy_extend": bound / extend_s}  # fmt: skip
    print(f"  restore from host: acquire {acquire_s:.3f} s, extend {extend_s:.3f} s, "
          f"copy bound {bound:.3f} s ({gbps:.1f} GB/s)", flush=True)  # fmt: skip
    return res


def _extend_new(engine: Engine, ids: list[int]):
    seq = engine.new_sequence()
    return seq, engine.extend(seq, ids)


def restore_from_disk(b: Bench, model, cfg: ModelConfig, disk: Path, ids: list[int],
                      pages: int, chunk: int) -> dict:  # fmt: skip
    """A new cache over the same directory (empty host and device), page cache dropped."""
    engine = make_engine(b, model, cfg, pages, pages, chunk, disk_dir=disk)
    kv = engine.kv
    n_pages = (len(ids) - 1) // b.args.page
    nbytes = n_pages * kv.layout.page_bytes
    big = disk / "sequential.bin"
    write_file(big, nbytes)
    res = {"bytes": nbytes, "cache_drop": drop_caches(disk)}
    res["extend_s"], (fresh, r) = b.timed(lambda: _extend_new(engine, ids))
    res["cached_by_tier"], res["computed_tokens"] = r.cached_by_tier, r.computed_tokens
    engine.release(fresh)
    # The sequential read lands in the (pinned, already touched) host slots the restore used.
    dest = kv.host.data.view(-1).view(torch.uint8).numpy()[:nbytes]
    drop_caches(disk)
    res["sequential_read_s"], _ = b.timed(lambda: read_sequential(big, dest))
    res["sequential_GBps"] = nbytes / res["sequential_read_s"] / 1e9
    res["restore_GBps"] = nbytes / res["extend_s"] / 1e9
    res["fraction_of_sequential"] = res["sequential_read_s"] / res["extend_s"]
    print(f"  restore from disk: {res['extend_s']:.2f} s ({res['restore_GBps']:.2f} GB/s); "
          f"sequential read {res['sequential_read_s']:.2f} s ({res['sequential_GBps']:.2f} GB/s)",
          flush=True)  # fmt: skip
    drop_engine(b, engine)
    big.unlink()
    return res


def write_file(path: Path, nbytes: int, chunk: int = 64 << 20) -> None:
    block = np.random.default_rng(0).integers(0, 255, chunk, dtype=np.uint8).tobytes()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(block[: min(chunk, left)])
        os.fsync(f.fileno())


def drop_caches(root: Path) -> str:
    """Drop the OS page cache (root), else fadvise DONTNEED on every file under root."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for p in root.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "fadvise_dontneed"


def read_sequential(path: Path, dest: np.ndarray, chunk: int = 16 << 20) -> int:
    view, got = memoryview(dest), 0
    with open(path, "rb", buffering=0) as f:
        while got < len(view) and (n := f.readinto(view[got : got + chunk])):
            got += n
    return got


# -- report ---------------------------------------------------------------------------------------


def summary(res: dict) -> list[tuple[str, float, float, float, float, bool | None, str]]:
    """Rows (what, measured, bound, baseline, goal, met, baseline's name); NaN where absent."""
    g = lambda *keys: _get(res, *keys)  # noqa: E731
    nan = math.nan
    rows = [
        ("prefill 128K (s)", g("prefill", "measured_s"), g("prefill", "bound_s"),
         g("hf", "prefill_128k_s"), GOALS["prefill_128k_s"], "lower", "transformers"),
        ("follow-up 2K on 1M, TTFT (s)", g("long", "follow_up_ttft_s"),
         g("long", "follow_up_bound_s"), nan, GOALS["follow_up_ttft_s"], "lower", ""),
        ("decode b1 1K (tok/s)", g("decode", "b1_1k", "graph_tok_s"),
         g("decode", "b1_1k", "bound_tok_s"), g("decode", "b1_1k", "eager_tok_s"),
         GOALS["decode_1k_tok_s"], "higher", "eager"),
        ("decode b1 128K (tok/s)", g("decode", "b1_128k", "graph_tok_s"),
         g("decode", "b1_128k", "bound_tok_s"), 1e3 / g("hf", "decode_128k_ms"),
         GOALS["decode_128k_tok_s"], "higher", "transformers"),
        ("decode b1 1M (tok/s)", g("long", "b1_1m", "graph_tok_s"),
         g("long", "b1_1m", "bound_tok_s"), g("long", "b1_1m", "eager_tok_s"),
         GOALS["decode_1m_tok_s"], "higher", "eager"),
        ("restore 128K from host (s)", g("restore", "host", "acquire_s"),
         g("restore", "host", "copy_bound_s"), g("restore", "prefill_disk_off_s"),
         g("restore", "host", "copy_bound_s") / GOALS["restore_fraction_of_copy"], "lower",
         "re-prefill"),
        ("restore 128K from disk (s)", g("restore", "disk", "extend_s"),
         g("restore", "disk", "sequential_read_s"), g("restore", "prefill_disk_off_s"),
         g("restore", "disk", "sequential_read_s") / GOALS["restore_fraction_of_copy"], "lower",
         "re-prefill"),
        ("prefill 128K, disk tier on (s)", g("restore", "prefill_disk_on_s"),
         g("restore", "prefill_disk_off_s"), nan,
         g("restore", "prefill_disk_off_s") * (1 + GOALS["write_through_slowdown"]), "lower",
         ""),
    ]  # fmt: skip
    out = []
    for what, measured, bound, base, goal, better, base_name in rows:
        met = None
        if not (math.isnan(measured) or math.isnan(goal)):
            met = measured <= goal if better == "lower" else measured >= goal
        out.append((what, measured, bound, base, goal, met, base_name))
    return out


def _get(res: dict, *keys: str) -> float:
    cur = res
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return math.nan
        cur = cur[k]
    return float(cur) if isinstance(cur, (int, float)) else math.nan


def print_table(res: dict) -> None:
    head = f"{'what':32s} {'measured':>9s} {'bound':>9s} {'baseline':>9s} {'goal':>9s}  met"
    print("\n" + head)
    for what, m, bd, base, goal, met, name in summary(res):
        ok = "-" if met is None else ("yes" if met else "NO")
        print(f"{what:32s} {m:9.3f} {bd:9.3f} {base:9.3f} {goal:9.3f}  {ok:3s}  {name}")
    print("(bound of the disk-tier-on row: the same prefill with the tier off)")
    if res["errors"]:
        print("errors:", json.dumps(res["errors"], indent=1))


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary(res)
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, (what, m, bd, base, goal, met, base_name) in zip(axes.flat, rows):
        names, vals = ["measured", "bound", base_name or "baseline", "goal"], [m, bd, base, goal]
        colors = ["tab:green" if met else "tab:red", "tab:gray", "tab:blue", "tab:orange"]
        ax.bar(names, [0 if math.isnan(v) else v for v in vals], color=colors)
        for i, v in enumerate(vals):
            if not math.isnan(v):
                ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(what, fontsize=10)
    fig.suptitle(f"engine on {res.get('machine', {}).get('gpu', '?')}, Qwen2.5-7B shape, bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--plot", default=None, help="write a PNG summary here")
    ap.add_argument("--parts", default="ceilings,hf,prefill,decode,long,restore")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and sizes (CPU smoke test)")
    ap.add_argument("--disk-dir", default=None, help="local disk for page files (default: /tmp)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no part after this")
    ap.add_argument("--hf-max-s", type=float, default=20.0, help="skip HF 128K if 32K took more")
    args = ap.parse_args()
    sizes(args)
    b = Bench(args)
    b.copy_bw, b.mm_rate, b.best_chunk = 4.2e12, 760e12, args.chunks[-1]
    b.layers = (tiny if args.tiny else qwen25_7b)(args.max_context).num_layers
    cfg = (tiny if args.tiny else qwen25_7b)(args.max_context)
    b.res["machine"] = machine(b)
    b.res["config"] = {k: v for k, v in vars(args).items()}
    torch.manual_seed(0)
    if b.wants("ceilings"):
        with b.part("ceilings") as out:
            part_ceilings(b, out)
    took, model = b.timed(lambda: build(b, cfg))
    b.res["build_s"] = took
    print(f"built the model in {took:.1f} s", flush=True)
    if b.wants("hf"):
        with b.part("hf") as out:
            part_hf(b, out, model, cfg)
        b.free()  # transformers' cache and activations
    if hasattr(model, "fuse_projections"):
        model.fuse_projections()
        b.res["fused_projections"] = True
        b.free()
    engine = make_engine(b, model, cfg, args.pool_pages, 4, args.chunks[-1])
    seq_long = None
    if b.wants("prefill"):
        with b.part("prefill") as out:
            seq_long = part_prefill(b, out, engine, cfg)
    if seq_long is not None and b.wants("decode"):
        with b.part("decode") as out:
            part_decode(b, out, engine, cfg, seq_long, model)
    if seq_long is not None:
        engine.release(seq_long)
    if b.wants("long"):
        with b.part("long") as out:
            engine.kv.evict_all_to_host()
            part_long(b, out, engine, cfg, model)
    drop_engine(b, engine)
    if b.wants("restore"):
        disk = Path(tempfile.mkdtemp(prefix="kvbench-", dir=args.disk_dir))
        with b.part("restore") as out:
            out["disk_dir"], out["disk_free_GB"] = str(disk), shutil.disk_usage(disk).free / 1e9
            part_restore(b, out, model, cfg, disk)
        shutil.rmtree(disk, ignore_errors=True)
    b.res["total_s"] = time.perf_counter() - b.t0
    b.save()
    print_table(b.res)
    if args.plot:
        try:
            plot(b.res, args.plot)
        except Exception as e:  # matplotlib may be missing: plot later from the JSON
            print(f"no plot: {e}")


def sizes(args: argparse.Namespace) -> None:
    """Token counts: the real ones, or small ones for --tiny."""
    if args.tiny:
        args.page, args.long, args.resident, args.follow_up = 16, 2 * K, 8 * K, 128
        args.chunks, args.hf_chunk, args.batches = [256, 512], 512, [4]
        args.decode_tokens, args.hf_decode_tokens = 16, 4
    else:
        args.page, args.long, args.resident, args.follow_up = PAGE, 128 * K, M, 2 * K
        args.chunks, args.hf_chunk, args.batches = [8 * K, 16 * K], 8 * K, [8, 32]
        args.decode_tokens, args.hf_decode_tokens = 256, 16
    args.max_context = args.resident + 2 * args.follow_up + 2 * args.decode_tokens
    args.pool_pages = -(-args.max_context // args.page) + 32  # slack for forks and batches


def machine(b: Bench) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "host": platform.node(), "cpus": os.cpu_count()}  # fmt: skip
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if b.cuda:
        p = torch.cuda.get_device_properties(b.dev)
        info.update(gpu=p.name, sms=p.multi_processor_count, memory_GB=p.total_memory / 1e9)
    return info


if __name__ == "__main__":
    main()
