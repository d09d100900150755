"""Placement: moving KV pages between tiers, and the eviction policy.

Making room runs device -> host -> disk by LRU over the prefix index, never touching pinned
pages. A device page going down keeps a host copy when a slot can be had (evicting the coldest
idle host copy, which is dropped if it is already on disk, else written synchronously first).
Write-through stages every sealed page in a host slot and queues it for the disk writer; a
staged slot cannot be evicted until its write is reported back by `drain`.
"""

from __future__ import annotations

from collections import Counter

from memory.device_pool import DevicePagePool, PagePoolExhausted
from memory.disk_tier import DiskTier
from memory.host_pool import HostPagePool
from memory.prefix_index import PageEntry, PrefixIndex
from memory.write_through import WriteJob, WriteThrough


class OutOfPages(PagePoolExhausted):
    """Every device page is pinned by a running sequence: nothing can be evicted."""


class Placement:
    """The tiers' shared state and the moves between them, for TieredKVCache.

    Not thread-safe: the owner's thread only. `unwritten` holds sealed pages that should reach
    disk but have no write queued (the queue was full); `in_flight` counts queued writes whose
    host slots are still busy.
    """

    def __init__(
        self,
        pool: DevicePagePool,
        host: HostPagePool,
        index: PrefixIndex,
        disk: DiskTier | None,
        writer: WriteThrough | None,
    ):
        self.pool = pool
        self.host = host
        self.index = index
        self.disk = disk
        self.writer = writer
        self.unwritten: dict[bytes, PageEntry] = {}
        self.in_flight = 0
        self.counts: Counter[str] = Counter()

    def flush(self) -> None:
        """Queue every unwritten page (waiting for room) and wait until all are written."""
        if self.writer is None:
            return
        self.drain()
        pending = list(self.unwritten.values())
        self.unwritten.clear()
        for e in pending:
            if not e.disk and not e.writing and (e.device is not None or e.host is not None):
                self.write_through(e, wait=True)
        self.writer.flush()
        self.drain()

    def write_through(self, e: PageEntry, wait: bool) -> None:
        """Stage e on host (if not there) and queue its disk write; without room, leave it
        unwritten for `flush` (or the last-copy eviction) to write."""
        if self.writer is None or not self.disk.writable:
            return
        if e.host is None:
            slots = self.take_host_slots(1, wait=wait)
            if not slots:
                self.unwritten[e.hash] = e
                return
            self.host.to_host(self.pool.data, [e.device], slots)
            self.index.set_host(e, slots[0])
        job = WriteJob(e.hash, e.host, self.host.slot_bytes(e.host), self.host.fence(e.host),
                       e.stamp)
        if wait:
            self.writer.submit_blocking(job)
        elif not self.writer.submit(job):
            self.unwritten[e.hash] = e
            return
        self.unwritten.pop(e.hash, None)
        self.index.set_writing(e, True)
        self.in_flight += 1

    def drain(self) -> None:
        """Apply finished disk writes (called at the top of every public method)."""
        if self.writer is None:
            return
        for h, _slot, ok in self.writer.completed():
            e = self.index.get(h)
            assert e is not None and e.writing, "a write finished for a page not being written"
            self.index.set_writing(e, False)
            self.in_flight -= 1
            if ok:
                self.index.set_disk(e, True)
            self.counts["disk_writes" if ok else "disk_write_failures"] += 1

    def take_device_pages(self, n: int) -> list[int]:
        """`n` free device pages, evicting unpinned cached pages by LRU; OutOfPages if not."""
        while self.pool.num_free < n:
            victim = self.index.lru_device()
            if victim is None:
                raise OutOfPages(
                    f"need {n} KV pages, {self.pool.num_free} free of {self.pool.num_pages} "
                    "and every other page is held by a running sequence"
                )
            self.evict_device(victim, keep_host=True)
        pages = self.pool.alloc(n)
        self.host.before_device_reuse(pages)
        return pages

    def take_device_pages_upto(self, n: int) -> list[int]:
        """As many of `n` device pages as eviction can supply (maybe none)."""
        while self.pool.num_free < n and (victim := self.index.lru_device()) is not None:
            self.evict_device(victim, keep_host=True)
        pages = self.pool.alloc(min(n, self.pool.num_free))
        self.host.before_device_reuse(pages)
        return pages

    def take_host_slots(self, n: int, wait: bool = False) -> list[int]:
        """Up to `n` free host slots, evicting idle host copies by LRU. With `wait`, when
        slots are short because pages are still being written, wait for those writes."""
        while self.host.num_free < n and self.evict_host_lru():
            pass
        if wait and self.host.num_free < n and self.in_flight:
            self.writer.flush()  # staged pages become idle host copies as they reach disk
            self.drain()
            while self.host.num_free < n and self.evict_host_lru():
                pass
        return self.host.alloc(min(n, self.host.num_free))

    def evict_device(self, e: PageEntry, keep_host: bool) -> None:
        """Drop e's device copy, first copying it to host unless a lower tier suffices."""
        if e.host is None and (keep_host or not e.disk):
            slots = self.take_host_slots(1, wait=not e.disk)  # wait rather than lose it
            if slots:
                self.host.to_host(self.pool.data, [e.device], slots)
                self.index.set_host(e, slots[0])
        if e.host is None and not e.disk:
            self.counts["dropped_pages"] += 1  # no room anywhere: it will be recomputed
            self.unwritten.pop(e.hash, None)
        page = e.device
        self.index.set_device(e, None)
        self.pool.free([page])
        self.counts["device_evictions"] += 1

    def evict_host_lru(self) -> bool:
        """Evict the LRU idle host copy, writing it to disk first if it is the last copy."""
        e = self.index.lru_host()
        if e is None:
            return False
        slot = e.host
        if e.device is None and not e.disk:
            self._write_now(e)
        self.index.set_host(e, None)
        self.host.free([slot])
        self.counts["host_evictions"] += 1
        return True

    def _write_now(self, e: PageEntry) -> None:
        """Synchronous write of a page's last copy (host) before it goes: memory pressure
        outran write-through. Without a writable disk the page is dropped."""
        self.unwritten.pop(e.hash, None)
        if self.disk is None or not self.disk.writable:
            self.counts["dropped_pages"] += 1
            return
        self.host.sync_slots([e.host])
        self.index.set_disk(e, self.disk.write(e.hash, self.host.slot_bytes(e.host)))
