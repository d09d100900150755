"""Restoring KV pages from disk versus a plain sequential read of the same bytes.

Writes N page files through the disk tier (durably, as write-through does), drops the page cache,
then times, each cold:

- `sequential_file`: one plain file holding the same bytes, read front to back in 16 MiB chunks
  into a preallocated buffer (the bandwidth ceiling);
- `sequential_pages`: the N page files read one after another with plain reads, no checks;
- `read_many_tN`: the disk tier's bulk path (headers and checksums verified) into host slots,
  on N threads;
- `acquire`: a fresh TieredKVCache (a "new process") bringing the whole chain to its device
  (disk -> host -> device), which is what a resumed session does (setup not timed);
- `acquire_from_host`: the same chain coming up from the host tier (pinned -> GPU on CUDA).

The page cache is dropped by writing 3 to /proc/sys/vm/drop_caches when permitted (as root), else
by posix_fadvise(DONTNEED) on every file; the JSON records which.

    python bench/kv_restore_cpu.py --pages 64 --out bench/results/kv_restore_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memory.disk_tier import DiskTier
from memory.hashing import model_fingerprint
from memory.host_pool import HostPagePool
from memory.kv_cache import TieredKVCache
from memory.kv_layout import KVLayout

CHUNK = 16 << 20


def drop_caches(paths: list[Path]) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise_dontneed"


def read_sequential(path: Path, buf: np.ndarray) -> int:
    view, got = memoryview(buf), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view[got : got + CHUNK]):
            got += n
    return got


def read_pages_plain(paths: list[Path], buf: np.ndarray) -> int:
    got = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            got += f.readinto(memoryview(buf)[got:])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--layers", type=int, default=28)  # Qwen2.5-7B: 28 layers, 4 KV heads, d 128
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=None, help="on the disk to measure (not tmpfs)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/kv_restore_cpu.json"))
    args = ap.parse_args()

    layout = KVLayout(args.layers, args.kv_heads, args.head_dim, args.page_size, torch.bfloat16)
    fp = model_fingerprint("bench", torch.bfloat16, layout, "bench", 1)
    root = Path(tempfile.mkdtemp(prefix="kv-restore-", dir=args.dir))
    n, pb = args.pages, layout.page_bytes
    total = n * pb
    try:
        results = run(args, layout, fp, root, n, pb, total)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "pages": n,
        "page_bytes": pb,
        "total_bytes": total,
        "device": args.device,
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def run(args, layout, fp, root, n, pb, total) -> dict:
    rng = np.random.default_rng(0)
    cache = TieredKVCache(layout, n + 1, 4, fp, root, None, args.device)
    tokens = rng.integers(0, 50000, n * layout.page_size).tolist()
    hashes = cache.page_hashes(tokens)
    cache.close()
    disk = DiskTier(root, fp, pb)
    payloads = [rng.integers(0, 256, pb, dtype=np.uint8) for _ in range(min(n, 8))]
    start = time.perf_counter()
    for i in range(0, n, 8):
        disk.write_many([(h, payloads[j % len(payloads)]) for j, h in enumerate(hashes[i : i + 8])])
    write_s = time.perf_counter() - start
    disk.close()
    page_paths = [disk.path(h) for h in hashes]
    plain = root / "plain.bin"
    with open(plain, "wb") as f:
        for p in page_paths:
            f.write(p.read_bytes()[-pb:])
        f.flush()
        os.fsync(f.fileno())
    all_paths = page_paths + [plain]
    buf = np.zeros(total, np.uint8)
    buf[:] = 1  # fault the pages in now: first touch would otherwise dominate the first read
    timings: dict[str, list[float]] = {}
    method = ""

    def timed(name, fn, setup=lambda: None):
        nonlocal method
        arg = setup()
        method = drop_caches(all_paths)
        t = time.perf_counter()
        fn(arg)
        timings.setdefault(name, []).append(time.perf_counter() - t)
        if arg is not None:
            arg.close()

    host = HostPagePool(layout, n, pin_memory=args.device.startswith("cuda"))
    for slot in range(n):
        host.slot_bytes(slot).fill(1)
    tiers = {t: DiskTier(root, fp, pb, read_threads=t) for t in args.threads}
    outs = [host.slot_bytes(s) for s in range(n)]
    for _ in range(args.repeats):
        timed("sequential_file", lambda _: read_sequential(plain, buf))
        timed("sequential_pages", lambda _: read_pages_plain(page_paths, buf))
        for t, tier in tiers.items():
            timed(f"read_many_t{t}", lambda _, tier=tier: _all(tier.read_many(hashes, outs)))
        fresh = lambda: _fresh_cache(layout, n, fp, root, args.device)  # noqa: E731
        timed("acquire", lambda c: _acquire(c, n, hashes), fresh)
        on_host = lambda: _on_host(layout, n, fp, root, args.device, hashes)  # noqa: E731
        timed("acquire_from_host", lambda c: _acquire(c, n, hashes, "host"), on_host)
    for tier in tiers.values():
        tier.close()
    out = {"cache_drop": method, "write_GBps_fsync": total / write_s / 1e9}
    for name, secs in timings.items():
        best, med = min(secs), statistics.median(secs)
        out[name] = {
            "median_s": med,
            "GBps_median": total / med / 1e9,
            "GBps_best": total / best / 1e9,
        }
    base = out["sequential_file"]["GBps_median"]
    out["ratio_to_sequential_file"] = {
        k: v["GBps_median"] / base
        for k, v in out.items()
        if isinstance(v, dict) and "GBps_median" in v
    }
    return out


def _all(ok: list[bool]) -> None:
    assert all(ok), "a page failed to read"


def _fresh_cache(layout, n, fp, root, device) -> TieredKVCache:
    """A new process's cache, its memory touched already (as a long-lived pool's would be)."""
    cache = TieredKVCache(layout, n, n, fp, root, None, device)
    cache.pool.data.view(torch.uint8).fill_(1)
    for slot in range(n):
        cache.host.slot_bytes(slot).fill(1)
    return cache


def _acquire(cache: TieredKVCache, n: int, hashes: list[bytes], tier: str = "disk") -> None:
    got = cache.acquire(hashes)
    if cache.pool.device.type == "cuda":
        torch.cuda.synchronize()
    assert got.by_tier == {tier: n}, got.by_tier


def _on_host(layout, n, fp, root, device, hashes) -> TieredKVCache:
    """A cache whose pages all sit in the host tier (restored from disk, then evicted)."""
    cache = _fresh_cache(layout, n, fp, root, device)
    cache._read_direct = False
    cache.release(cache.acquire(hashes).pages)
    cache.evict_all_to_host()
    return cache


if __name__ == "__main__":
    main()
