"""Where a first turn's ingest time goes beyond the raw prefill, measured in one process.

The same N random tokens are prefilled through `LocalModel.open` (the product's path) under
each variant, one after another, each with a fresh cache directory:
- raw: no prefix cache (private device pages; what `agent generate --no-prefix-cache` does);
- tiers: the product's default (sealed pages staged in the host tier and written to disk);
- prepinned: the same, with the host chunks the prefill needs pinned before it starts;
- nodisk: tiers without the disk writer (pages stay on device and host);
- pageable: tiers with a pageable host tier (no pinning after the first chunk).
Each row: extend seconds, the flush after it, the chunk gaps (largest wait between chunks).
Then the costs alone: pinning 1 GiB, touching 1 GiB of pageable memory, writing 2 GiB to the
cache disk with fsync.

Usage (on the H200, after `. bench/h200_setup.sh`):
    python3 bench/gpu_ingest.py --tokens 57344 131072 --out $OUT/gpu_ingest.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.local_model import LocalModel, RuntimeOptions  # noqa: E402
from tests.model_folder import QWEN25_7B_1M, write_model_folder  # noqa: E402

VARIANTS = ("raw", "tiers", "prepinned", "nodisk", "pageable")


def prepare(kv, variant: str, tokens: int) -> None:
    """Put the cache into the variant's state before the prefill."""
    if variant == "prepinned":
        host = kv.host
        need = -(-tokens // kv.layout.page_size) // host._per_chunk + 1
        for chunk in range(min(need, len(host._chunks))):
            host._materialize(chunk)
    elif variant == "nodisk":
        kv.tiers.writer = None
    elif variant == "pageable":
        kv.host._pin = False


def run_variant(folder: Path, variant: str, ids: list[int], work: Path) -> dict:
    cache = tempfile.mkdtemp(prefix=variant, dir=work)
    os.environ["AGENT_CACHE_DIR"] = cache
    t0 = time.perf_counter()
    model = LocalModel.open(str(folder), RuntimeOptions(prefix_cache=variant != "raw"))
    opened = time.perf_counter() - t0
    engine = model.engine
    if variant != "raw":
        prepare(engine.kv, variant, len(ids))
    torch.cuda.synchronize()
    seq = engine.new_sequence()
    marks: list[float] = []
    start = time.perf_counter()
    engine.extend(seq, ids, progress=lambda done, total: marks.append(time.perf_counter()))
    torch.cuda.synchronize()
    extend_s = time.perf_counter() - start
    t = time.perf_counter()
    model.flush()
    flush_s = time.perf_counter() - t
    gaps = [b - a for a, b in zip([start, *marks], marks, strict=False)]
    stats = engine.kv.stats() if hasattr(engine.kv, "stats") else {}
    engine.release(seq)
    model.close()
    del model, engine, seq
    gc.collect()
    torch.cuda.empty_cache()
    shutil.rmtree(cache)  # the next variant needs the disk
    return {"variant": variant, "tokens": len(ids), "open_s": round(opened, 2),
            "extend_s": round(extend_s, 3), "flush_s": round(flush_s, 3),
            "chunk_s_min": round(min(gaps), 3), "chunk_s_max": round(max(gaps), 3),
            "chunks": len(gaps), "stats": {k: v for k, v in stats.items()
                                            if isinstance(v, int | float)}}


def costs(work: Path) -> dict:
    """Pinning, first touch and the disk's write rate, each alone."""
    gib = 1 << 30
    out: dict[str, list[float]] = {"pin_1gib_s": [], "pageable_touch_1gib_s": []}
    for _ in range(3):
        t = time.perf_counter()
        x = torch.empty(gib, dtype=torch.uint8, pin_memory=True)
        out["pin_1gib_s"].append(round(time.perf_counter() - t, 3))
        del x
        t = time.perf_counter()
        y = torch.empty(gib, dtype=torch.uint8)
        y.fill_(1)
        out["pageable_touch_1gib_s"].append(round(time.perf_counter() - t, 3))
        del y
    block = os.urandom(64 << 20)
    path = work / "write_probe"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(32):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    out["disk_write_gb_s"] = round(2 * gib / 1e9 / (time.perf_counter() - t), 2)
    path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[57344])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_ingest"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = write_model_folder(Path(os.environ.get("AGENT_TEST_MODEL_DIR", "/tmp/models"))
                                / "qwen25-7b-1m", QWEN25_7B_1M)
    rows: list[dict] = [{"costs": costs(args.work)}]
    print(json.dumps(rows[0]), flush=True)
    gen = torch.Generator().manual_seed(0)
    for n in args.tokens:
        ids = torch.randint(100, 30000, (n,), generator=gen).tolist()
        for variant in args.variants:
            row = run_variant(folder, variant, ids, args.work)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
