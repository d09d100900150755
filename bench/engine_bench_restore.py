"""Issue 3 in bench/gpu_engine.py: restore from host and disk, write-through cost."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_bench_core import (  # noqa: E402
    Bench,
    K,
    drop_engine,
    make_engine,
    pinned_h2d_gbps,
    prefill,
    rand_ids,
)

from runtime.config import ModelConfig  # noqa: E402
from runtime.engine.engine import Engine  # noqa: E402
from runtime.engine.sequence import Sequence  # noqa: E402


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
    gbps = pinned_h2d_gbps(b, nbytes)
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
    # The sequential read lands in host memory already touched, as the restore's slots were.
    dest = np.ones(nbytes, dtype=np.uint8)
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
