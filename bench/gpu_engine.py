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

Imports only torch, numpy and triton from the runtime (transformers for the `hf` part). The
parts live beside it: engine_bench_core.py (shapes, timing, engine, ceilings), engine_bench_hf.py,
engine_bench_restore.py, engine_bench_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_bench_core import (  # noqa: E402
    PAGE,
    Bench,
    K,
    M,
    attention_flops,
    build,
    copy_tbps,
    drop_engine,
    layout_of,
    linear_flops_per_token,
    make_engine,
    matmul_tflops,
    pinned_h2d_gbps,
    prefill,
    qwen25_7b,
    rand_ids,
    set_chunk,
    tiny,
    weight_bytes,
)
from engine_bench_hf import (  # noqa: E402
    part_hf,
)
from engine_bench_report import (  # noqa: E402
    plot,
    print_table,
)
from engine_bench_restore import (  # noqa: E402
    part_restore,
)

from runtime.config import ModelConfig  # noqa: E402
from runtime.engine.engine import Engine  # noqa: E402
from runtime.engine.sampling import SamplingParams  # noqa: E402
from runtime.engine.sequence import Sequence  # noqa: E402

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


def part_kernels(b: Bench, out: dict) -> None:
    """The kernel goals, by bench/gpu_kernels.py's code: extend attention of 2K queries over 1M
    keys (TFLOP/s) and batch-1 decode attention over 1M keys (TB/s), SDPA beside them."""
    import gpu_kernels

    out["extend_1m"] = gpu_kernels.bench_extend([1 << 20], 2048, tune=False)[0]
    out["decode_1m"] = gpu_kernels.bench_decode([(1, 1 << 20)], tune=False)[0]
    b.free()


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
    if b.cuda:
        out["b1_1k_ablations"] = ablations(b, engine, short)
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


def ablations(b: Bench, engine: Engine, seq: Sequence, n: int = 128) -> dict:
    """Batch-1 tok/s at 1K with one decode feature off at a time (graphs captured again)."""
    from runtime.kernels import pdl
    from runtime.models import llama

    switches = {"no_pdl": (pdl, "ENABLED"), "no_gemv": (llama, "DECODE_GEMV"),
                "no_pipeline": (engine, "config")}  # fmt: skip
    out = {}
    for name, (owner, attr) in switches.items():
        saved = getattr(owner, attr)
        off = dataclasses.replace(saved, pipeline_decode=False) if attr == "config" else False
        setattr(owner, attr, off)
        engine.runner.graphs.reset()
        try:
            with forked(engine, seq) as s:
                decode_tok_s(b, engine, s, 8)  # capture
            with forked(engine, seq) as s:
                out[name] = decode_tok_s(b, engine, s, n)[0]
        finally:
            setattr(owner, attr, saved)
            engine.runner.graphs.reset()
        print(f"  decode b1 at 1K, {name}: {out[name]:.1f} tok/s", flush=True)
    with forked(engine, seq) as s:  # a constraint's host mask each step, as an agent turn has
        params = SamplingParams(max_tokens=n, ignore_eos=True, constraint=_AllowAll())
        it = engine.generate(s, params)
        next(it)
        took, rest = b.timed(lambda: [e.token_id for e in it])
        out["constrained"] = (len(rest) - 1) / took
    print(f"  decode b1 at 1K, with a constraint's mask: {out['constrained']:.1f} tok/s")
    return out


class _AllowAll:
    """A constraint that allows every token: the cost of a host mask per step, nothing else."""

    def allowed(self, vocab_size: int) -> torch.Tensor:
        return torch.ones(vocab_size, dtype=torch.bool)

    def advance(self, token: int) -> None:
        pass

    def finished(self) -> bool:
        return False


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


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--plot", default=None, help="write a PNG summary here")
    ap.add_argument("--parts", default="ceilings,kernels,hf,prefill,decode,long,restore")
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
    if b.wants("kernels") and b.cuda and not args.tiny:
        with b.part("kernels") as out:
            part_kernels(b, out)
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
