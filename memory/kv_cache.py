"""TieredKVCache: the facade the engine uses for KV pages across device, host and disk."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from memory.device_pool import DevicePagePool
from memory.disk_tier import DiskTier
from memory.hashing import chain_hashes, page_hash
from memory.host_pool import HostPagePool
from memory.kv_layout import KVLayout
from memory.placement import OutOfPages, Placement
from memory.prefix_index import PageEntry, PrefixIndex
from memory.state_snapshots import StateSnapshotStore
from memory.tail_store import TailStore
from memory.write_through import WriteThrough

__all__ = ["Acquired", "OutOfPages", "PrefixHit", "TieredKVCache"]

_DISK_CHUNK = 256  # pages read from disk per batch during a restore


@dataclass(slots=True)
class PrefixHit:
    """Where each leading cached page of a hash chain lives: "device", "host" or "disk"."""

    tiers: list[str] = field(default_factory=list)

    @property
    def num_pages(self) -> int:
        return len(self.tiers)

    @property
    def by_tier(self) -> dict[str, int]:
        return dict(Counter(self.tiers))


@dataclass(slots=True)
class Acquired:
    """Device pages now holding the longest available prefix, pinned for the caller."""

    pages: list[int] = field(default_factory=list)
    by_tier: dict[str, int] = field(default_factory=dict)  # tier name -> pages served from it


class TieredKVCache:
    """KV pages in three tiers behind one small API; `pool.data` is what the kernels read.

    Pages are device page ids (ints indexing `pool.data`). A page is either *private* (being
    filled by one sequence; refcounted by `pin`/`release`, freed at zero) or *sealed* (full,
    immutable, named by its chain hash, shared by every sequence with that prefix, kept cached
    at refcount zero and evicted by LRU: device -> host -> disk, never while pinned).

    - `alloc(n)` returns n private pages, evicting unpinned cached pages if needed; raises
      OutOfPages (taking none) if the pool cannot supply them.
    - `seal(page, h)` publishes a full private page under chain hash h. The id returned is the
      one to use from now on: `page` itself, or the already cached device copy of h (then
      `page` is freed). The caller's hold moves to the returned page. With a disk tier the
      page is copied to host and queued for disk in the background.
    - `acquire(hashes)` brings the longest available prefix of the chain to the device (host
      -> device, disk -> host -> device, disk pages verified) and pins it; it stops at the
      first page that is missing, fails verification, or finds no device page to land in.
    - `pin`/`release` add and drop one holder of pages (private or sealed).
    - `flush()` returns once every sealed page is durable on disk (or its write failed).
      Only flushed pages are promised to survive the process; `close()` flushes and ends use.

    Page ids handed out stay valid until released; the contents of a sealed page never change.
    Not thread-safe: one caller thread (the engine's); the write-through worker only reports
    back through a queue drained here. I/O trouble never raises: a bad page file is recomputed,
    an unwritable disk turns the disk tier off with one warning.
    """

    prefix_caching = True

    def __init__(
        self,
        layout: KVLayout,
        device_pages: int,
        host_pages: int,
        fingerprint: bytes,
        disk_dir: Path | None = None,
        disk_max_bytes: int | None = None,
        device: str | torch.device = "cpu",
        *,
        write_queue: int = 64,
        read_threads: int = 4,
    ):
        self.layout = layout
        self.fingerprint = fingerprint
        self.pool = DevicePagePool(layout, device_pages, device)
        self.host = HostPagePool(layout, host_pages, pin_memory=self.pool.device.type == "cuda")
        self.index = PrefixIndex()
        self.disk: DiskTier | None = None
        self.writer: WriteThrough | None = None
        if disk_dir is not None:
            self.disk = DiskTier(
                Path(disk_dir),
                fingerprint,
                layout.page_bytes,
                max_bytes=disk_max_bytes,
                read_threads=read_threads,
            )
            self.writer = WriteThrough(self.disk, write_queue)
        # Partial last pages and last logits, so a resume recomputes nothing (tail_store.py).
        self.tails: TailStore | None = TailStore(self.disk, layout) if self.disk else None
        # Hybrid models' linear-layer states at page boundaries (state_snapshots.py).
        self.snapshots = StateSnapshotStore(self.disk)
        self._private: dict[int, int] = {}  # device page -> holders, for unsealed pages
        self.tiers = Placement(self.pool, self.host, self.index, self.disk, self.writer)
        # A CPU "device" is host memory: disk pages are read straight into it (tests may turn
        # this off to exercise the host path).
        self._read_direct = self.pool.device.type == "cpu"

    # -- hashes --------------------------------------------------------------------------------

    def page_hash(self, prev: bytes | None, tokens: Sequence[int]) -> bytes:
        """The next chain link; `prev=None` starts the chain at the model fingerprint."""
        return page_hash(self.fingerprint if prev is None else prev, tokens)

    def page_hashes(self, tokens: Sequence[int]) -> list[bytes]:
        """The chain hashes of every full page of `tokens`."""
        return chain_hashes(self.fingerprint, tokens, self.layout.page_size)

    # -- lookup and acquire --------------------------------------------------------------------

    def lookup(self, hashes: list[bytes]) -> PrefixHit:
        """Which leading pages of the chain are cached, and in which tier (nothing moves)."""
        self.tiers.drain()
        hit = PrefixHit()
        for h in hashes:
            tier = self._tier_of(h)
            if tier is None:
                break
            hit.tiers.append(tier)
        return hit

    def acquire(self, hashes: list[bytes]) -> Acquired:
        """Bring the longest available prefix to the device and pin it (see the class doc)."""
        self.tiers.drain()
        for e in reversed(self.index.match(hashes)):
            self.index.touch(e)  # so making room below evicts other pages first
        got = Acquired()
        while len(got.pages) < len(hashes):
            h = hashes[len(got.pages)]
            e = self.index.get(h)
            if e is not None and e.device is not None:
                self._hold(got, e, "device")
            elif e is not None and e.host is not None:
                if not self._host_up(e):
                    break
                self._hold(got, e, "host")
            elif not self._disk_up(hashes, got):
                break
        self.tiers.counts["miss_pages"] += len(hashes) - len(got.pages)
        return got

    def _hold(self, got: Acquired, e: PageEntry, tier: str) -> None:
        self.index.pin(e)
        got.pages.append(e.device)
        got.by_tier[tier] = got.by_tier.get(tier, 0) + 1
        self.tiers.counts[f"hit_{tier}"] += 1

    def _host_up(self, e: PageEntry) -> bool:
        """Copy a host page to a fresh device page; False if no device page can be had."""
        self.index.set_restoring(e, True)  # making room below must not evict this host copy
        try:
            pages = self.tiers.take_device_pages_upto(1)
        finally:
            self.index.set_restoring(e, False)
        if not pages:
            return False
        self.host.to_device([e.host], self.pool.data, pages)
        self.index.set_device(e, pages[0])
        return True

    def _disk_up(self, hashes: list[bytes], got: Acquired) -> bool:
        """Read the next run of disk-only pages (verified) through host to device.

        True if the whole run came up, so the caller goes on after it. Device pages and host
        slots are taken before any read, so making room cannot evict a page of the run. On a
        CPU device, device memory is host memory: pages are read straight into it."""
        run = self._disk_run(hashes, len(got.pages))
        pages = self.tiers.take_device_pages_upto(len(run))
        direct = self._read_direct
        slots = [] if direct else self.tiers.take_host_slots(len(pages), wait=True)
        n = len(pages) if direct else len(slots)
        self.pool.free(pages[n:])
        run, pages = run[:n], pages[:n]
        self.host.sync_slots(slots)  # an earlier copy may still read them
        bufs = (
            [self.pool.page_bytes(p) for p in pages]
            if direct
            else [self.host.slot_bytes(s) for s in slots]
        )
        ok = self.disk.read_many(run, bufs) if n else []
        n_ok = ok.index(False) if False in ok else n
        self._forget_on_disk(run[n_ok : n_ok + 1])
        self.host.free(slots[n_ok:])
        self.pool.free(pages[n_ok:])
        if not direct:
            self.host.to_device(slots[:n_ok], self.pool.data, pages[:n_ok])
        if n_ok:  # the restored chain is the newest, its head newest of all
            now = time.time()
            self.disk.stamp(run[:n_ok], [now - (len(got.pages) + i) * 1e-6 for i in range(n_ok)])
        for i, h in enumerate(run[:n_ok]):
            e = self.index.get(h) or self.index.add(h)
            self.index.set_disk(e, True)
            if not direct:
                self.index.set_host(e, slots[i])
            self.index.set_device(e, pages[i])
            self._hold(got, e, "disk")
        return 0 < n_ok == len(run)

    def _disk_run(self, hashes: list[bytes], start: int) -> list[bytes]:
        """The hashes from `start` on that only the disk holds (at most one chunk)."""
        if self.disk is None:
            return []
        run = []
        for h in hashes[start : start + _DISK_CHUNK]:
            e = self.index.get(h)
            in_memory = e is not None and (e.device is not None or e.host is not None)
            if in_memory or not ((e is not None and e.disk) or self.disk.contains(h)):
                break
            run.append(h)
        return run

    def _forget_on_disk(self, hashes: list[bytes]) -> None:
        for h in hashes:
            e = self.index.get(h)
            if e is not None:
                self.index.set_disk(e, False)

    def _tier_of(self, h: bytes) -> str | None:
        e = self.index.get(h)
        if e is not None and e.device is not None:
            return "device"
        if e is not None and e.host is not None:
            return "host"
        on_disk = e.disk if e is not None else False
        if self.disk is not None and (on_disk or self.disk.contains(h)):
            return "disk"
        return None

    # -- private pages, sealing, holders -------------------------------------------------------

    def alloc(self, n: int) -> list[int]:
        """`n` private pages, pinned once for the caller (see the class doc)."""
        self.tiers.drain()
        pages = self.tiers.take_device_pages(n)
        for p in pages:
            self._private[p] = 1
        return pages

    def seal(self, page_id: int, h: bytes, stamp: float = 0.0) -> int:
        """Publish a full private page under hash h; returns the id to use from now on.
        `stamp` orders it for the disk's LRU gc (PageEntry.stamp; 0: now)."""
        self.tiers.drain()
        holders = self._private.pop(page_id, None)
        assert holders == 1, f"sealing page {page_id} with {holders} holders (must be 1 private)"
        e = self.index.get(h)
        if e is not None and e.device is not None:
            self.pool.free([page_id])  # a copy is cached already: share it
            self.index.pin(e)
            return e.device
        if e is None:
            e = self.index.add(h)
            if self.disk is not None and self.disk.contains(h):
                self.index.set_disk(e, True)  # written by an earlier session or process
        self.index.set_device(e, page_id)
        self.index.pin(e)
        e.stamp = stamp or time.time()
        if not e.disk and not e.writing:
            self.tiers.write_through(e, wait=False)
        return page_id

    def pin(self, page_ids: list[int]) -> None:
        """Add one holder to each page (a fork sharing its parent's pages)."""
        for p in page_ids:
            if p in self._private:
                self._private[p] += 1
            else:
                self.index.pin(self._sealed(p))

    def release(self, page_ids: list[int]) -> None:
        """Drop one holder of each page: private pages are freed at zero, sealed stay cached."""
        freed = []
        # Reversed: a chain's tail becomes least recently used, so eviction takes it before the
        # head, without which the tail could not be used anyway.
        for p in reversed(page_ids):
            holders = self._private.get(p)
            if holders is None:
                self.index.unpin(self._sealed(p))
            elif holders > 1:
                self._private[p] = holders - 1
            else:
                del self._private[p]
                freed.append(p)
        self.pool.free(freed)

    def _sealed(self, page: int) -> PageEntry:
        e = self.index.by_device(page)
        assert e is not None, f"device page {page} is neither private nor sealed"
        return e

    # -- durability ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Return once every sealed page and saved tail is durable on disk (or its write
        failed, logged)."""
        self.tiers.flush()
        if self.tails is not None:
            self.tails.flush()
        self.snapshots.flush()

    def evict_all_to_host(self) -> None:
        """Move every unpinned device page down a tier (tests and benchmarks)."""
        self.tiers.drain()
        while (e := self.index.lru_device()) is not None:
            self.tiers.evict_device(e, keep_host=True)

    def evict_all_to_disk(self) -> None:
        """Flush, then drop every unpinned device and idle host copy (tests and benchmarks);
        pages with no disk copy are lost from the cache."""
        self.flush()
        while (e := self.index.lru_device()) is not None:
            self.tiers.evict_device(e, keep_host=False)
        while self.tiers.evict_host_lru():
            pass

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict:
        """Pages and bytes per tier, hits and misses per tier, write-through counters."""
        self.tiers.drain()
        pb = self.layout.page_bytes
        sealed_dev = sum(1 for e in self.index.entries() if e.device is not None)
        dev = {
            "pages": self.pool.num_pages,
            "free": self.pool.num_free,
            "private": len(self._private),
            "cached": sealed_dev,
            "evictable": self.index.num_device_evictable,
        }
        host = {
            "pages": self.host.num_pages,
            "free": self.host.num_free,
            "cached": self.host.num_pages - self.host.num_free,
        }
        for tier in (dev, host):
            tier["bytes"] = (tier["pages"] - tier["free"]) * pb
        out = {
            "page_bytes": pb,
            "indexed": len(self.index),
            "device": dev,
            "host": host,
            "unwritten": len(self.tiers.unwritten),
            "pending_writes": self.tiers.in_flight,
            **dict(self.tiers.counts),
        }
        if self.disk is not None:
            out["disk"] = {**asdict(self.disk.stats()), **self.disk.counters}
        return out

    def check(self) -> None:
        """Assert the invariants: index consistency, and every page and slot accounted once
        (free, private or cached). O(pages): for tests and idle time, not the hot path."""
        self.index.check()
        entries = list(self.index.entries())
        on_device = {e.device for e in entries if e.device is not None}
        on_host = {e.host for e in entries if e.host is not None}
        assert on_device.isdisjoint(self._private), "a page is both private and sealed"
        used = len(on_device) + len(self._private)
        assert used + self.pool.num_free == self.pool.num_pages, "device pages leaked"
        assert len(on_host) + self.host.num_free == self.host.num_pages, "host slots leaked"
        assert self.tiers.in_flight == sum(e.writing for e in entries), "write count drifted"

    def close(self) -> None:
        """Flush and stop the background threads."""
        self.flush()
        if self.tails is not None:
            self.tails.close()
        self.snapshots.close()
        self.host.close()
        if self.writer is not None:
            self.writer.close()
            self.disk.close()

    def __enter__(self) -> TieredKVCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
