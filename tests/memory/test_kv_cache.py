"""TieredKVCache: sharing, eviction, restore from host and disk, new processes, bad disks."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest
import torch

from memory.hashing import model_fingerprint
from memory.kv_cache import OutOfPages, TieredKVCache
from memory.kv_layout import KVLayout

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, page_size=4, dtype=torch.bfloat16)
FP = model_fingerprint("test-weights", torch.bfloat16, LAYOUT, "theta=10000", 1)


def make(
    disk_dir: Path | None,
    device_pages: int = 16,
    host_pages: int = 8,
    fingerprint: bytes = FP,
    device: str = "cpu",
    **kw,
) -> TieredKVCache:
    return TieredKVCache(
        LAYOUT, device_pages, host_pages, fingerprint, disk_dir, None, device, **kw
    )


def content(h: bytes) -> torch.Tensor:
    """What the model would compute for the prefix named h (deterministic per hash)."""
    g = torch.Generator().manual_seed(int.from_bytes(h[:7], "little"))
    return torch.randn(LAYOUT.page_shape, generator=g).to(LAYOUT.dtype)


def prefill(cache: TieredKVCache, tokens: list[int]):
    """The engine's part: reuse the cached prefix, compute and seal the remaining full pages."""
    hashes = cache.page_hashes(tokens)
    got = cache.acquire(hashes)
    pages = list(got.pages)
    for p, h in zip(cache.alloc(len(hashes) - len(pages)), hashes[len(pages) :], strict=True):
        cache.pool.data[p] = content(h).to(cache.pool.device)
        pages.append(cache.seal(p, h))
    return pages, got


def assert_exact(cache: TieredKVCache, pages: list[int], tokens: list[int]) -> None:
    want = torch.stack([content(h) for h in cache.page_hashes(tokens)])
    assert torch.equal(cache.pool.data[pages].cpu(), want), "restored KV differs"
    cache.check()


def accounted(cache: TieredKVCache) -> bool:
    s = cache.stats()["device"]
    return s["free"] + s["private"] + s["cached"] == s["pages"]


TOKENS = list(range(100, 140))  # 10 full pages


def test_equal_prefixes_share_device_pages(tmp_path: Path):
    with make(tmp_path) as cache:
        a, got_a = prefill(cache, TOKENS)
        b, got_b = prefill(cache, TOKENS[:30] + [7] * 10)
        assert got_a.pages == [] and got_b.by_tier == {"device": 7}
        assert b[:7] == a[:7] and set(b[7:]).isdisjoint(a)
        assert_exact(cache, b, TOKENS[:30] + [7] * 10)


def test_seal_of_an_already_cached_page_returns_the_cached_copy(tmp_path: Path):
    with make(tmp_path) as cache:
        a, _ = prefill(cache, TOKENS)
        h = cache.page_hashes(TOKENS)[0]
        (p,) = cache.alloc(1)
        free_before = cache.pool.num_free
        assert cache.seal(p, h) == a[0]
        assert cache.pool.num_free == free_before + 1
        cache.release([a[0]])  # one hold each
        cache.release([a[0]])
        assert cache.index.get(h).refcount == 0 and accounted(cache)


def test_release_keeps_sealed_pages_and_frees_private_ones(tmp_path: Path):
    with make(tmp_path) as cache:
        pages, _ = prefill(cache, TOKENS)
        private = cache.alloc(2)
        cache.pin(private[:1])
        cache.release(pages + private)
        assert cache.lookup(cache.page_hashes(TOKENS)).by_tier == {"device": 10}
        assert cache.stats()["device"]["private"] == 1
        cache.release(private[:1])
        assert cache.stats()["device"]["private"] == 0 and accounted(cache)


def test_alloc_evicts_lru_unpinned_pages_and_refuses_when_all_are_pinned(tmp_path: Path):
    with make(tmp_path, device_pages=12) as cache:
        old, _ = prefill(cache, TOKENS)
        cache.release(old[:6])  # the first six are evictable, the last four still held
        cache.flush()
        new = cache.alloc(8)
        hit = cache.lookup(cache.page_hashes(TOKENS))
        assert set(hit.tiers[:6]) <= {"host", "disk"} and hit.tiers[6:] == ["device"] * 4
        with pytest.raises(OutOfPages):
            cache.alloc(1)
        assert cache.pool.num_free == 0 and len(new) == 8 and accounted(cache)


@pytest.mark.parametrize("tier", ["host", "disk", "disk via host"])
def test_acquire_after_forced_eviction_is_byte_identical(tmp_path: Path, tier: str):
    with make(tmp_path, host_pages=16) as cache:
        cache._read_direct = tier == "disk"  # "via host" is the CUDA path, run on CPU
        tier = tier.split()[0]
        pages, _ = prefill(cache, TOKENS)
        cache.release(pages)
        cache.evict_all_to_host() if tier == "host" else cache.evict_all_to_disk()
        assert cache.stats()["device"]["cached"] == 0
        assert cache.lookup(cache.page_hashes(TOKENS)).by_tier == {tier: 10}
        got = cache.acquire(cache.page_hashes(TOKENS))
        assert got.by_tier == {tier: 10}
        assert_exact(cache, got.pages, TOKENS)


def test_restore_through_a_tiny_host_pool(tmp_path: Path):
    with make(tmp_path, device_pages=12, host_pages=1) as cache:
        cache._read_direct = False
        pages, _ = prefill(cache, TOKENS)
        cache.release(pages)
        cache.evict_all_to_disk()
        got = cache.acquire(cache.page_hashes(TOKENS))
        assert got.by_tier == {"disk": 10}
        assert_exact(cache, got.pages, TOKENS)


def test_a_new_process_finds_the_pages_on_disk(tmp_path: Path):
    with make(tmp_path) as first:
        prefill(first, TOKENS)
    with make(tmp_path) as second:  # close() flushed the first; nothing is shared but the dir
        assert second.lookup(second.page_hashes(TOKENS)).by_tier == {"disk": 10}
        pages, got = prefill(second, TOKENS + [1, 2, 3, 4])
        assert got.by_tier == {"disk": 10} and len(pages) == 11
        assert_exact(second, pages, TOKENS + [1, 2, 3, 4])


def test_pages_of_another_fingerprint_are_never_used(tmp_path: Path):
    with make(tmp_path) as first:
        prefill(first, TOKENS)
    other_fp = model_fingerprint("test-weights", torch.bfloat16, LAYOUT, "theta=10000", 2)
    with make(tmp_path, fingerprint=other_fp) as other:
        assert other.lookup(other.page_hashes(TOKENS)).num_pages == 0
        assert other.acquire(first.page_hashes(TOKENS)).pages == []  # even given the names


def test_a_corrupt_page_stops_the_restore_and_is_recomputed(tmp_path: Path, caplog):
    hashes = None
    with make(tmp_path) as first:
        prefill(first, TOKENS)
        hashes = first.page_hashes(TOKENS)
        path = first.disk.path(hashes[4])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with make(tmp_path) as second, caplog.at_level(logging.WARNING):
        pages, got = prefill(second, TOKENS)
        assert got.by_tier == {"disk": 4} and "recomputed" in caplog.text
        assert_exact(second, pages, TOKENS)
        second.flush()
        assert second.disk.contains(hashes[4])  # written again by the recompute


def test_unwritable_disk_warns_once_and_work_goes_on(tmp_path: Path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING), make(blocker / "cache", host_pages=2) as cache:
        pages, _ = prefill(cache, TOKENS)
        cache.release(pages)
        cache.flush()
        cache.evict_all_to_disk()  # nowhere to go: dropped, to be recomputed
        pages, got = prefill(cache, TOKENS)
        assert got.pages == [] and cache.stats()["dropped_pages"] > 0
        assert_exact(cache, pages, TOKENS)
    assert caplog.text.count("disabled") == 1


def test_pages_refused_by_a_full_queue_are_written_at_flush(tmp_path: Path):
    with make(tmp_path, device_pages=24, host_pages=24, write_queue=1) as cache:
        real = cache.disk.write_many
        cache.disk.write_many = lambda items, st=None: (time.sleep(0.02), real(items, st))[1]
        prefill(cache, TOKENS)
        prefill(cache, [5] * 40)
        assert cache.stats()["unwritten"] > 0
        cache.flush()
        stats = cache.stats()
        assert stats["unwritten"] == 0 and stats["disk"]["own_files"] == 20


def test_host_slots_busy_with_writes_are_waited_for_not_dropped(tmp_path: Path):
    with make(tmp_path, host_pages=4) as cache:
        cache._read_direct = False  # the CUDA path: disk -> host -> device
        real = cache.disk.write_many
        cache.disk.write_many = lambda items, st=None: (time.sleep(0.01), real(items, st))[1]
        pages, _ = prefill(cache, TOKENS)
        cache.release(pages)
        cache.evict_all_to_host()  # the host is full of pages still being written
        assert "dropped_pages" not in cache.stats()
        got = cache.acquire(cache.page_hashes(TOKENS))
        assert sum(got.by_tier.values()) == 10
        assert_exact(cache, got.pages, TOKENS)


def test_without_disk_eviction_stops_at_host(tmp_path: Path):
    with make(None, device_pages=12, host_pages=4) as cache:
        pages, _ = prefill(cache, TOKENS)
        cache.release(pages)
        cache.evict_all_to_host()  # four fit on host, the rest is dropped
        got = cache.acquire(cache.page_hashes(TOKENS))
        assert got.by_tier == {"host": 4}  # the chain's head was kept, the tail dropped
        cache.release(got.pages)
        pages, _ = prefill(cache, TOKENS)
        assert_exact(cache, pages, TOKENS)


def test_random_workload_keeps_every_page_exact(tmp_path: Path):
    """Shared prefixes, forks, truncation-like releases and forced evictions, all checked."""
    rng = random.Random(0)
    stems = [[rng.randrange(1000) for _ in range(24)] for _ in range(3)]
    with make(tmp_path, device_pages=20, host_pages=6, write_queue=2) as cache:
        cache._read_direct = False
        held: list[list[int]] = []
        for step in range(60):
            tokens = rng.choice(stems)[: rng.randrange(4, 25)]
            tokens = tokens + [rng.randrange(1000) for _ in range(rng.randrange(0, 9))]
            while held and cache.pool.num_free + cache.index.num_device_evictable < 10:
                cache.release(held.pop(rng.randrange(len(held))))
            pages, _ = prefill(cache, tokens)
            assert_exact(cache, pages, tokens)
            held.append(pages)
            if rng.random() < 0.3:
                cache.pin(pages)  # a fork shares them
                held.append(list(pages))
            if step % 17 == 16:
                cache.evict_all_to_host() if step % 2 else cache.evict_all_to_disk()
            assert accounted(cache)
        for pages in held:
            cache.release(pages)
        assert cache.stats()["device"]["private"] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_cuda_restore_is_byte_identical(tmp_path: Path, tier: str):
    with make(tmp_path, host_pages=16, device="cuda") as cache:
        assert cache.host.slot(0).is_pinned()
        pages, _ = prefill(cache, TOKENS)
        cache.release(pages)
        cache.evict_all_to_host() if tier == "host" else cache.evict_all_to_disk()
        got = cache.acquire(cache.page_hashes(TOKENS))
        assert got.by_tier == {tier: 10}
        assert_exact(cache, got.pages, TOKENS)
    with make(tmp_path, device="cuda") as fresh:
        pages, got = prefill(fresh, TOKENS)
        assert got.by_tier == {"disk": 10}
        assert_exact(fresh, pages, TOKENS)
