"""Triton attention kernels on one GPU against torch SDPA on contiguous memory.

Qwen2.5-7B attention shape (28 query heads, 4 kv heads, head_dim 128), bf16, 256-token pages in a
two-layer pool (so the per-layer views have the engine's strides), pages in random order.

    python bench/gpu_kernels.py --out results.json [--tune extend|decode|all] [--quick]

Reports, with the measured ceilings of the card (device copy, bf16 matmul) as the bounds:
- extend: 2K new queries over {64K, 256K, 1M} keys (end-aligned causal), TFLOP/s of the causal
  work, Triton vs SDPA flash (lower-right causal) and SDPA cuDNN / flash without the mask (their
  work differs from the causal one by under 0.1% at these lengths; shown for speed only);
- decode: batch 1 over {8K, 128K, 1M} keys and batch 8 over 128K keys each, TB/s of K+V bytes
  read, Triton vs SDPA with the G query heads of a kv head as G query rows;
- KV store: GB/s of bytes read plus written.
Imports only torch and triton (plus runtime/kernels), so it runs on a bare GPU image.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.kernels.torch_ref import store_kv_reference  # noqa: E402
from runtime.kernels.triton_decode import (  # noqa: E402
    DecodeConfig,
    decode_attention,
    decode_num_splits,
)
from runtime.kernels.triton_extend import (  # noqa: E402
    ExtendConfig,
    extend_attention,
    extend_num_splits,
)
from runtime.kernels.triton_linear import GemvConfig, gemv  # noqa: E402
from runtime.kernels.triton_store import store_kv  # noqa: E402

HQ, HKV, D, PAGE = 28, 4, 128, 256
DT = torch.bfloat16
DEV = torch.device("cuda")
SCALE = D**-0.5


def bench(fn: Callable[[], object], rep_ms: int = 300) -> float:
    """Median milliseconds of `fn` (device events; L2 flushed between runs by do_bench)."""
    return float(triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median"))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


class PagedKV:
    """`num_keys` keys of one sequence in a [pages, 2 layers, 2, PAGE, HKV, D] pool, shuffled."""

    def __init__(self, num_keys: int, batch: int = 1):
        pages = triton.cdiv(num_keys, PAGE)
        self.pool = torch.empty((pages * batch, 2, 2, PAGE, HKV, D), dtype=DT, device=DEV)
        self.pool.normal_()
        self.k, self.v = self.pool[:, 1, 0], self.pool[:, 1, 1]
        perm = torch.randperm(pages * batch, device=DEV, dtype=torch.int64).to(torch.int32)
        self.tables = perm.view(batch, pages)
        self.seq_lens = torch.full((batch,), num_keys, dtype=torch.int32, device=DEV)
        self.num_keys = num_keys

    def contiguous(self, b: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence b's keys and values as `(1, HKV, L, D)` contiguous tensors (SDPA layout)."""
        idx = self.tables[b].long()

        def gather(cache: torch.Tensor) -> torch.Tensor:
            flat = cache[idx].flatten(0, 1)[: self.num_keys]  # (L, HKV, D)
            return flat.transpose(0, 1).contiguous().unsqueeze(0)

        return gather(self.k), gather(self.v)


def causal_flops(q_len: int, kv_len: int) -> float:
    """QK^T and PV over the keys each query sees (end-aligned causal)."""
    seen = q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2
    return 4.0 * seen * D * HQ


def ceilings() -> dict:
    n = 1 << 30  # 2 GiB of bf16
    src = torch.empty(n, dtype=DT, device=DEV).normal_()
    dst = torch.empty_like(src)
    ms = bench(functools.partial(dst.copy_, src))
    copy_tbs = 2 * n * 2 / ms / 1e9
    src = dst = None  # free 4 GiB before the matmul
    a = torch.randn(8192, 8192, dtype=DT, device=DEV)
    b = torch.randn(8192, 8192, dtype=DT, device=DEV)
    ms = bench(lambda: a @ b)
    mm_tflops = 2 * 8192**3 / ms / 1e9
    return {"copy_TBps": copy_tbs, "matmul_bf16_TFLOPs": mm_tflops}


def sdpa_variants(qs, ks, vs, causal_ok: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """SDPA backends on contiguous (1, H, L, D) tensors; keys missing where they cannot run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    out: dict[str, Callable[[], torch.Tensor]] = {}

    def make(backend, mask, gqa):
        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(
                    qs, ks, vs, attn_mask=mask, scale=SCALE, enable_gqa=gqa
                )

        return fn

    tq, tk = qs.shape[2], ks.shape[2]
    mask = causal_lower_right(tq, tk) if causal_ok else None
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ):
        fn = make(backend, mask if name == "flash" else None, qs.shape[1] != ks.shape[1])
        try:
            fn()
            torch.cuda.synchronize()
            label = name + ("_causal" if (name == "flash" and causal_ok) else "_nomask")
            out[label] = fn
        except Exception as e:  # a backend that rejects these shapes is left out
            print(f"  sdpa {name}: {str(e).splitlines()[0][:100]}")
    return out


def bench_extend(kv_lens: list[int], q_len: int, tune: bool) -> list[dict]:
    rows = []
    for kv_len in kv_lens:
        kv = PagedKV(kv_len)
        q = torch.randn(q_len, HQ, D, dtype=DT, device=DEV)
        qsl = torch.tensor([0, q_len], dtype=torch.int32, device=DEV)
        flops = causal_flops(q_len, kv_len)

        def tri(cfg=None, splits=None, q=q, kv=kv, qsl=qsl, kv_len=kv_len):
            return lambda: extend_attention(
                q,
                kv.k,
                kv.v,
                kv.tables,
                kv.seq_lens,
                qsl,
                q_len,
                SCALE,
                max_seq_len=kv_len,
                num_splits=splits,
                config=cfg,
            )

        ks, vs = kv.contiguous()
        qs = q.transpose(0, 1).unsqueeze(0)  # (1, HQ, q_len, D)
        sdpa = sdpa_variants(qs, ks, vs, causal_ok=True)
        ref = None
        if "flash_causal" in sdpa:
            ref = sdpa["flash_causal"]()[0].transpose(0, 1)
        tiles = triton.cdiv(q_len, 128 // (HQ // HKV)) * HKV
        row = {
            "kv_len": kv_len,
            "q_len": q_len,
            "flops": flops,
            "auto_splits": extend_num_splits(tiles, kv_len, DEV),
        }
        variants = {"triton": tri()}
        if tune:
            E = ExtendConfig
            sweep = [
                (E(128, 128, 8, 2, tma=True), None),
                (E(128, 128, 8, 2, tma=True, prefetch_page=True), None),
                (E(128, 128, 8, 3, tma=True), None),
                (E(128, 128, 8, 3, tma=True, prefetch_page=True), None),
                (E(128, 64, 8, 3, tma=True, prefetch_page=True), None),
                (E(128, 64, 8, 4, tma=True, prefetch_page=True), None),
                (E(128, 64, 4, 3, tma=True, prefetch_page=True), None),
                (E(64, 64, 4, 3, tma=True, prefetch_page=True), None),
                (E(64, 128, 4, 2, tma=True, prefetch_page=True), None),
                (E(128, 128, 8, 2, tma=True, warp_specialize=True), None),
                (E(128, 128, 8, 3, tma=True, warp_specialize=True), None),
                (E(128, 64, 8, 3, tma=True, warp_specialize=True), None),
                (E(128, 128, 4, 2, tma=True, warp_specialize=True), None),
            ]  # fmt: skip
            for cfg, splits in sweep:
                name = f"triton_m{cfg.block_m}n{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}"
                name += ("_tma" if cfg.tma else "") + ("_ws" if cfg.warp_specialize else "")
                name += "_pf" if cfg.prefetch_page else ""
                variants[f"{name}_k{splits}"] = tri(cfg, splits)
        for name, fn in variants.items():
            try:
                out = fn()
                ms = bench(fn, rep_ms=400 if kv_len > 300_000 else 300)
            except Exception as e:  # a config that does not compile (shared memory) is skipped
                print(f"  extend {name} kv={kv_len}: {type(e).__name__} {str(e)[:120]}")
                continue
            err = rel_err(out, ref) if ref is not None else None
            row[name] = {"ms": ms, "TFLOPs": flops / ms / 1e9, "rel_err_vs_sdpa": err}
        for name, fn in sdpa.items():
            ms = bench(fn, rep_ms=400 if kv_len > 300_000 else 300)
            row["sdpa_" + name] = {"ms": ms, "TFLOPs": flops / ms / 1e9}
        rows.append(row)
        print(
            f"  extend kv={kv_len}: "
            + ", ".join(f"{k} {v['TFLOPs']:.0f}" for k, v in row.items() if isinstance(v, dict)),
            flush=True,
        )
        kv = ks = vs = sdpa = variants = None  # free this size's tensors before the next
        torch.cuda.empty_cache()
    return rows


def bench_decode(cases: list[tuple[int, int]], tune: bool) -> list[dict]:
    rows = []
    for batch, kv_len in cases:
        kv = PagedKV(kv_len, batch)
        q = torch.randn(batch, HQ, D, dtype=DT, device=DEV)
        kv_bytes = 2 * batch * kv_len * HKV * D * 2
        auto = decode_num_splits(batch, HKV, kv.tables.shape[1] * PAGE, DEV)
        row = {"batch": batch, "kv_len": kv_len, "bytes": kv_bytes, "auto_splits": auto}

        def tri(cfg=None, splits=None, q=q, kv=kv):
            return lambda: decode_attention(
                q, kv.k, kv.v, kv.tables, kv.seq_lens, SCALE, num_splits=splits, config=cfg
            )

        # SDPA: the G query heads of each kv head become G query rows, no mask (exact for decode).
        ks = torch.cat([kv.contiguous(b)[0] for b in range(batch)])
        vs = torch.cat([kv.contiguous(b)[1] for b in range(batch)])
        qs = q.view(batch, HKV, HQ // HKV, D)
        sdpa = sdpa_variants(qs, ks, vs, causal_ok=False)
        ref = next(iter(sdpa.values()))().reshape(batch, HQ, D) if sdpa else None
        variants = {"triton": tri()}
        if tune:
            for cfg in (
                DecodeConfig(64, 4, 3),
                DecodeConfig(128, 4, 3),
                DecodeConfig(64, 4, 4),
                DecodeConfig(32, 4, 4),
                DecodeConfig(128, 8, 3),
                DecodeConfig(64, 8, 4),
            ):
                for splits in sorted({auto, 2 * auto, max(1, auto // 2)}):
                    name = f"triton_n{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}_k{splits}"
                    variants[name] = tri(cfg, min(splits, 256))
        for name, fn in variants.items():
            try:
                out = fn()
                ms = bench(fn)
            except Exception as e:
                print(f"  decode {name}: {type(e).__name__} {str(e)[:120]}")
                continue
            err = rel_err(out, ref) if ref is not None else None
            row[name] = {"ms": ms, "TBps": kv_bytes / ms / 1e9, "rel_err_vs_sdpa": err}
        for name, fn in sdpa.items():
            ms = bench(fn)
            row["sdpa_" + name] = {"ms": ms, "TBps": kv_bytes / ms / 1e9}
        # Launch-bound at small sizes: also time the Triton decode replayed from a CUDA graph.
        try:
            row["triton_graph"] = graph_time(tri(), kv_bytes)
        except Exception as e:
            print(f"  decode graph: {type(e).__name__} {str(e)[:120]}")
        rows.append(row)
        print(
            f"  decode b={batch} kv={kv_len}: "
            + ", ".join(f"{k} {v['TBps']:.2f}" for k, v in row.items() if isinstance(v, dict)),
            flush=True,
        )
        kv = ks = vs = sdpa = variants = None  # free this size's tensors before the next
        torch.cuda.empty_cache()
    return rows


def graph_time(fn: Callable[[], object], nbytes: int, reps: int = 20) -> dict:
    """Per-call time of `reps` calls captured in one CUDA graph."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    ms = bench(g.replay) / reps
    return {"ms": ms, "TBps": nbytes / ms / 1e9}


# Batch-1 projections of Qwen2.5-7B: (name, N, K, bias, act); down reads the gate/up output.
GEMV_SHAPES = [("qkv", 4608, 3584, True, None), ("o_proj", 3584, 3584, False, None),
               ("gate_up", 37888, 3584, False, None), ("down", 3584, 18944, False, "silu_mul"),
               ("lm_head", 152064, 3584, False, None)]  # fmt: skip


def bench_gemv(tune: bool) -> list[dict]:
    """Each projection over `copies` distinct weights in turn (as 28 layers are: nothing stays
    in L2), replayed from a CUDA graph; GB/s of weight bytes, GEMV kernel vs cuBLAS."""
    rows = []
    for name, n, k, has_bias, act in GEMV_SHAPES:
        copies = max(2, min(8, (2 << 30) // (n * k * 2)))
        ws = [torch.randn(n, k, dtype=DT, device=DEV) / k**0.5 for _ in range(copies)]
        bias = torch.randn(n, dtype=DT, device=DEV) if has_bias else None
        x = torch.randn(1, 2 * k if act else k, dtype=DT, device=DEV)
        nbytes = n * k * 2 * copies

        def cublas(x=x, ws=ws, bias=bias, act=act, k=k):
            for w in ws:
                h = x
                if act:
                    h = F.silu(x[:, :k]) * x[:, k:]
                F.linear(h, w, bias)

        def ours(cfg=None, x=x, ws=ws, bias=bias, act=act):
            return lambda: [gemv(x, w, bias, act=act, config=cfg) for w in ws]

        ref = F.linear(F.silu(x[:, :k]) * x[:, k:] if act else x, ws[0], bias).float()
        err = rel_err(gemv(x, ws[0], bias, act=act), ref)
        row = {"name": name, "n": n, "k": k, "rel_err": err,
               "cublas": graph_time(cublas, nbytes), "gemv": graph_time(ours(), nbytes)}
        if tune:
            for bn in (4, 8, 16):
                for bk in (512, 1024):
                    for warps in (4, 8):
                        if bn * bk // (32 * warps) > 128:  # fp32 accumulators per thread
                            continue
                        cfg = GemvConfig(bn, bk, warps, 2)
                        try:
                            row[f"gemv_n{bn}k{bk}w{warps}"] = graph_time(ours(cfg), nbytes)
                        except Exception as e:  # noqa: BLE001 (a config that does not build)
                            print(f"  gemv {name} {cfg}: {type(e).__name__}", flush=True)
        best = max((v["TBps"], key) for key, v in row.items()
                   if isinstance(v, dict) and key.startswith("gemv"))
        row["best"] = best
        print(f"  gemv {name} {n}x{k}: cublas {row['cublas']['TBps']:.2f} TB/s, gemv "
              f"{row['gemv']['TBps']:.2f}, best {best[1]} {best[0]:.2f}, err {err:.1e}",
              flush=True)  # fmt: skip
        rows.append(row)
        ws = None
        torch.cuda.empty_cache()
    return rows


def bench_store(token_counts: list[int]) -> list[dict]:
    rows = []
    pages = 8192  # 2M slots, 8 GiB pool with 2 layers
    pool = torch.empty((pages, 2, 2, PAGE, HKV, D), dtype=DT, device=DEV)
    kc, vc = pool[:, 1, 0], pool[:, 1, 1]
    for n in token_counts:
        # k and v as slices of a fused qkv projection output, as the models hand them over.
        qkv = torch.randn(n, (HQ + 2 * HKV) * D, dtype=DT, device=DEV)
        k = qkv[:, HQ * D : (HQ + HKV) * D].view(n, HKV, D)
        v = qkv[:, (HQ + HKV) * D :].view(n, HKV, D)
        slots = torch.randperm(pages * PAGE, device=DEV)[:n]
        nbytes = 2 * (2 * n * HKV * D * 2)  # read k, v; write k, v
        ms = bench(functools.partial(store_kv, kc, vc, k, v, slots))
        ref_ms = bench(functools.partial(store_kv_reference, kc, vc, k, v, slots, PAGE))
        rows.append(
            {
                "tokens": n,
                "bytes": nbytes,
                "triton": {"ms": ms, "GBps": nbytes / ms / 1e6},
                "torch_index_put": {"ms": ref_ms, "GBps": nbytes / ref_ms / 1e6},
            }
        )
        print(
            f"  store n={n}: triton {nbytes / ms / 1e6:.0f} GB/s, index_put "
            f"{nbytes / ref_ms / 1e6:.0f} GB/s",
            flush=True,
        )
    return rows


def kernel_resources() -> list[dict]:
    """Registers, spills, shared memory and wgmma use of every compiled kernel (best effort)."""
    from runtime.kernels import triton_decode, triton_extend, triton_store

    fns = {
        "extend": triton_extend._extend_kernel,
        "decode": triton_decode._decode_kernel,
        "merge": triton_decode._merge_kernel,
        "store": triton_store._store_kv_kernel,
    }
    out = []
    for name, fn in fns.items():
        for caches in getattr(fn, "device_caches", {}).values():
            for key, k in caches[0].items():
                try:
                    md = k.metadata
                    out.append(
                        {
                            "kernel": name,
                            "regs": k.n_regs,
                            "spills": k.n_spills,
                            "shared": md.shared,
                            "warps": md.num_warps,
                            "stages": md.num_stages,
                            "wgmma": "wgmma" in k.asm.get("ptx", ""),
                            "key": str(key)[-160:],
                        }
                    )
                except Exception as e:  # attributes differ across triton versions
                    out.append({"kernel": name, "error": repr(e)[:100]})
    return out


def table(res: dict) -> str:
    ce = res["ceilings"]
    lines = [
        f"ceilings: copy {ce['copy_TBps']:.2f} TB/s, bf16 matmul "
        f"{ce['matmul_bf16_TFLOPs']:.0f} TFLOP/s"
    ]
    lines.append("extend (2K queries, TFLOP/s; bound = matmul ceiling)")
    for r in res["extend"]:
        cells = {k: v["TFLOPs"] for k, v in r.items() if isinstance(v, dict)}
        best = max((k for k in cells if k.startswith("triton")), key=cells.get, default=None)
        lines.append(
            f"  kv {r['kv_len']:>8}: triton {cells.get('triton', math.nan):6.1f}"
            f" (best {best} {cells.get(best, math.nan):.1f}) | "
            + "  ".join(f"{k} {v:.1f}" for k, v in cells.items() if k.startswith("sdpa"))
        )
    lines.append("decode (TB/s of K+V read; bound = copy ceiling)")
    for r in res["decode"]:
        cells = {k: v["TBps"] for k, v in r.items() if isinstance(v, dict)}
        best = max((k for k in cells if k.startswith("triton")), key=cells.get, default=None)
        lines.append(
            f"  b{r['batch']} kv {r['kv_len']:>8} (splits {r['auto_splits']}): triton "
            f"{cells.get('triton', math.nan):.2f} graph "
            f"{cells.get('triton_graph', math.nan):.2f} (best {best} "
            f"{cells.get(best, math.nan):.2f}) | "
            + "  ".join(f"{k} {v:.2f}" for k, v in cells.items() if k.startswith("sdpa"))
        )
    lines.append("store (GB/s read + written)")
    for r in res["store"]:
        lines.append(
            f"  {r['tokens']:>6} tokens: triton {r['triton']['GBps']:.0f}, "
            f"index_put {r['torch_index_put']['GBps']:.0f}"
        )
    return "\n".join(lines)


def _tunes(args: argparse.Namespace, kernel: str) -> bool:
    wanted = args.tune.split(",")
    return kernel in wanted or "all" in wanted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON results path")
    ap.add_argument("--tune", default="",
                    help="sweep tile configs of these kernels: extend,decode,gemv or all")
    ap.add_argument("--quick", action="store_true", help="skip the 1M-key extend case")
    ap.add_argument("--parts", default="store,decode,extend,gemv",
                    help="comma-separated sections to run (ceilings always run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    res: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shape": {"hq": HQ, "hkv": HKV, "d": D, "page": PAGE, "dtype": "bf16"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(section: str, value: object) -> None:
        res[section] = value  # written after each section, so a run cut short keeps the rest
        args.out.write_text(json.dumps(res, indent=1))

    save("ceilings", ceilings())
    print("ceilings", res["ceilings"], flush=True)
    parts = args.parts.split(",")
    if "gemv" in parts:
        save("gemv", bench_gemv(_tunes(args, "gemv")))
    if "store" in parts:
        save("store", bench_store([2048, 65536]))
    if "decode" in parts:
        decode_cases = [(1, 1024), (1, 8192), (1, 131072), (1, 1 << 20), (8, 131072)]
        save("decode", bench_decode(decode_cases, _tunes(args, "decode")))
    if "extend" in parts:
        kv_lens = [65536, 262144] if args.quick else [65536, 262144, 1 << 20]
        save("extend", bench_extend(kv_lens, 2048, _tunes(args, "extend")))
    res["kernels"] = kernel_resources()
    for r in res["kernels"]:
        print("  ", {k: v for k, v in r.items() if k != "key"})
    save("wall_s", time.time() - t0)
    print(table(res))


if __name__ == "__main__":
    main()
