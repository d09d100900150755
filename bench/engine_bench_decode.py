"""Decode measurements of bench/gpu_engine.py: steady-state tok/s, eager versus graphs, one
feature off at a time, and where the GPU time of a forward goes (profiler)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_bench_core import Bench, K, rand_ids  # noqa: E402

from runtime.config import ModelConfig  # noqa: E402
from runtime.engine.engine import Engine  # noqa: E402
from runtime.engine.sampling import SamplingParams  # noqa: E402
from runtime.engine.sequence import Sequence  # noqa: E402


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


def ablations(b: Bench, engine: Engine, seq: Sequence, n: int = 128) -> dict:
    """Batch-1 tok/s at 1K with one decode feature off at a time (graphs captured again)."""
    switches = {"no_pdl": "pdl", "no_gemv": "decode_gemv", "no_pipeline": None}
    out = {}
    for name, option in switches.items():
        saved = engine.config
        if option is None:
            engine.config = dataclasses.replace(saved, pipeline_decode=False)
        else:  # a layer-ops option (runtime/kernels/layer_ops.py); drops the graphs
            engine.runner.set_ops_options(**{option: False})
        engine.runner.graphs.reset()
        try:
            with forked(engine, seq) as s:
                decode_tok_s(b, engine, s, 8)  # capture
            with forked(engine, seq) as s:
                out[name] = decode_tok_s(b, engine, s, n)[0]
        finally:
            engine.config = saved
            if option is not None:
                engine.runner.set_ops_options(**{option: True})
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
