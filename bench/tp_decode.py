"""Tensor parallel at Qwen2.5-32B's shape: batch-1 decode and a prefill for TP 1/2/4/8 on one
host's GPUs, each against the one-GPU run and the bounds (bytes per step over the HBM rate;
FLOPs over the matmul rate), as JSON.

    python bench/tp_decode.py --tp 1,2,4 --out bench/results/tp_decode_h200.json

Random bf16 weights written once as a HF folder under --root (64 GB at this shape; every TP
size then reads its shards from the page cache). The runtime starts its own rank processes:
no torchrun. Done when (issue 17): TP2 decode >= 1.6x one GPU, TP4 >= 2.8x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tp_bench_core import (  # noqa: E402
    DEVICE,
    SHAPES,
    close,
    decode_bound_ms,
    decode_ms,
    device_name,
    folder,
    open_split,
    prefill_bound_s,
    timed_prefill,
    write,
)

TARGETS = {2: 1.6, 4: 2.8}  # decode speed-up over one GPU the issue asks for


def run_one(path: Path, tp: int, args) -> dict:
    start = time.perf_counter()
    model = open_split(path, tp, max_context=args.context + args.prefill + args.decode + 64,
                       context_parallel=0)  # this benchmark measures the TP layout itself
    row = {"tp": tp, "open_s": round(time.perf_counter() - start, 1)}
    try:
        seq, took = timed_prefill(model, args.prefill)
        row["prefill_s"] = round(took, 4)
        row["prefill_tok_s"] = round(args.prefill / row["prefill_s"])
        model.engine.release(seq)
        seq, _ = timed_prefill(model, args.context)
        row["decode_ms"] = round(decode_ms(model, seq, args.decode), 3)
    finally:
        close(model)
    shape = SHAPES[args.shape]
    row["decode_bound_ms"] = round(decode_bound_ms(shape, args.context, tp), 3)
    row["prefill_bound_s"] = round(prefill_bound_s(shape, args.prefill, tp), 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", default="1,2,4,8", help="TP sizes, comma-separated (<= GPUs)")
    p.add_argument("--shape", default="qwen2.5-32b", choices=sorted(SHAPES))
    p.add_argument("--prefill", type=int, default=16384, help="prefill tokens (fresh)")
    p.add_argument("--context", type=int, default=4096, help="context tokens under decode")
    p.add_argument("--decode", type=int, default=128, help="decode steps timed")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "agent-bench")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    gpus = torch.cuda.device_count() if DEVICE == "cuda" else 64
    sizes = [int(t) for t in args.tp.split(",") if int(t) <= gpus]
    path = folder(args.root, args.shape)
    report = {"shape": args.shape, "gpu": device_name(), "rows": []}
    for tp in sizes:
        report["rows"].append(run_one(path, tp, args))
        _compare(report["rows"])
        write(args.out, report)


def _compare(rows: list[dict]) -> None:
    one = next((r for r in rows if r["tp"] == 1), None)
    for r in rows:
        if one is not None:
            r["decode_speedup"] = round(one["decode_ms"] / r["decode_ms"], 2)
            r["prefill_speedup"] = round(one["prefill_s"] / r["prefill_s"], 2)
            if r["tp"] in TARGETS:
                r["meets_target"] = r["decode_speedup"] >= TARGETS[r["tp"]]
        r["decode_of_bound"] = round(r["decode_bound_ms"] / r["decode_ms"], 2)
        r["prefill_of_bound"] = round(r["prefill_bound_s"] / r["prefill_s"], 2)


if __name__ == "__main__":
    main()
