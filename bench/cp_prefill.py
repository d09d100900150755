"""Context-parallel prefill at Qwen2.5-7B's shape: a long fresh prefill on N GPUs split by
tokens (zigzag, K/V all-gathered, log-sum-exp merge) against the same prefill on one GPU (in
chunks) and on N GPUs tensor-parallel only, at several lengths (the crossover sets
runtime/distributed/context_parallel.py's CP_MIN_TOKENS) and at 1M tokens, as JSON.

    python bench/cp_prefill.py --tp 4 --lengths 32768,131072 --out bench/results/cp_prefill.json
    python bench/cp_prefill.py --tp 4 --lengths 1000000 --one-gpu-s 486 ...

A 1M-token prefill on one GPU takes ~8 minutes: `--one-gpu-s` gives a measured time instead
of running it again. Done when (issue 17): 1M tokens on 4 GPUs in at most 0.3x the one-GPU
time. Random bf16 weights written once as a HF folder under --root (15 GB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tp_bench_core import (  # noqa: E402
    SHAPES,
    close,
    device_name,
    folder,
    open_split,
    prefill_bound_s,
    timed_prefill,
    write,
)

TARGET = 0.3  # the 4-GPU 1M prefill's time over the one-GPU time


def prefill_s(path: Path, tp: int, tokens: int, cp: bool) -> tuple[float, bool]:
    """Seconds for one fresh prefill of `tokens`, and whether it ran context-parallel."""
    model = open_split(path, tp, max_context=tokens + 64,
                       context_parallel=(1 if cp else 0) if tp > 1 else None)
    try:
        _, took = timed_prefill(model, tokens)
        ran_cp = tp > 1 and model.engine.runner.prefills > 0
    finally:
        close(model)
    return took, ran_cp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", type=int, default=4, help="GPUs of the parallel runs")
    p.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    p.add_argument("--lengths", default="32768,131072", help="prefill tokens, comma-separated")
    p.add_argument("--one-gpu-s", type=float, default=None,
                   help="a measured one-GPU time for the longest length (skips running it)")
    p.add_argument("--skip-tp-only", action="store_true", help="no tensor-parallel-only run")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "agent-bench")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    path, shape = folder(args.root, args.shape), SHAPES[args.shape]
    lengths = [int(n) for n in args.lengths.split(",")]
    report = {"shape": args.shape, "gpus": args.tp, "gpu": device_name(),
              "rows": []}
    for n in lengths:
        row = {"tokens": n, "bound_one_gpu_s": round(prefill_bound_s(shape, n, 1), 2)}
        given = args.one_gpu_s if n == max(lengths) else None
        row["one_gpu_s"] = given or round(prefill_s(path, 1, n, cp=False)[0], 2)
        row["cp_s"], row["ran_cp"] = prefill_s(path, args.tp, n, cp=True)
        if not args.skip_tp_only:
            row["tp_only_s"] = round(prefill_s(path, args.tp, n, cp=False)[0], 2)
        row["cp_s"] = round(row["cp_s"], 2)
        row["cp_over_one_gpu"] = round(row["cp_s"] / row["one_gpu_s"], 3)
        if args.tp == 4 and n >= 1_000_000:
            row["meets_target"] = row["cp_over_one_gpu"] <= TARGET
        report["rows"].append(row)
        write(args.out, report)


if __name__ == "__main__":
    main()
