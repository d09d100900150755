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
import os
import platform
import shutil
import sys
import tempfile
import time
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
from engine_bench_decode import (  # noqa: E402
    ablations,
    batch_tok_s,
    decode_point,
    decode_tok_s,
    forked,
    graph_vs_eager,
    profile_forwards,
    with_breakdown,
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
