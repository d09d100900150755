"""The prefix index: chain hash -> where that page lives, who pins it, and LRU order per tier.

Pure ints and bytes, no tensors (the block manager of nano-vllm, extended to three tiers). The
tiers themselves (device pool, host pool, disk files) are owned by the caller; the index only
records slot numbers and keeps the eviction candidates of each tier in LRU order, so picking a
victim is O(1) and never scans pinned pages.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class PageEntry:
    """One sealed page. At least one of `device`, `host`, `disk` holds it while it is indexed.

    `refcount` counts running sequences holding the device copy (never evicted while > 0).
    `writing` marks a host copy that is the source of a queued disk write, `restoring` one
    being copied up to the device right now; neither may be evicted until cleared.
    """

    hash: bytes
    device: int | None = None
    host: int | None = None
    disk: bool = False
    refcount: int = 0
    last_used: int = 0
    writing: bool = False
    restoring: bool = False
    # Last use of its chain on the clock, less 1 us per page of depth: the page file's mtime,
    # so the disk's LRU gc removes old chains whole and each from its tail, never a head
    # that later pages need.
    stamp: float = 0.0


class PrefixIndex:
    """hash -> PageEntry, with reverse maps from device page and host slot, and per-tier LRU.

    Contract: every change to an entry's tier fields or pins goes through the methods here, so
    the LRU lists stay exact: the device list holds unpinned entries with a device copy, the host
    list entries with an idle host copy. Both are ordered least recently used first.
    """

    def __init__(self) -> None:
        self._entries: dict[bytes, PageEntry] = {}
        self._by_device: dict[int, PageEntry] = {}
        self._by_host: dict[int, PageEntry] = {}
        self._device_lru: OrderedDict[bytes, PageEntry] = OrderedDict()
        self._host_lru: OrderedDict[bytes, PageEntry] = OrderedDict()
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, h: bytes) -> bool:
        return h in self._entries

    def get(self, h: bytes) -> PageEntry | None:
        return self._entries.get(h)

    def by_device(self, page: int) -> PageEntry | None:
        """The sealed entry whose device copy is `page` (None for private pages)."""
        return self._by_device.get(page)

    def entries(self) -> Iterator[PageEntry]:
        return iter(list(self._entries.values()))

    def match(self, hashes: list[bytes]) -> list[PageEntry]:
        """Entries of the longest indexed prefix of `hashes` (stops at the first miss)."""
        out = []
        for h in hashes:
            e = self._entries.get(h)
            if e is None:
                break
            out.append(e)
        return out

    # -- mutation ------------------------------------------------------------------------------

    def add(self, h: bytes) -> PageEntry:
        """A new entry in no tier yet; the caller places it right away."""
        assert h not in self._entries, "page hash already indexed"
        e = PageEntry(h, last_used=next(self._clock))
        self._entries[h] = e
        return e

    def set_device(self, e: PageEntry, page: int | None) -> None:
        if e.device is not None:
            del self._by_device[e.device]
        e.device = page
        if page is not None:
            assert page not in self._by_device, f"device page {page} already holds a page"
            self._by_device[page] = e
        self._sync(e)

    def set_host(self, e: PageEntry, slot: int | None) -> None:
        if e.host is not None:
            del self._by_host[e.host]
        e.host = slot
        if slot is not None:
            assert slot not in self._by_host, f"host slot {slot} already holds a page"
            self._by_host[slot] = e
        self._sync(e)

    def set_disk(self, e: PageEntry, on_disk: bool) -> None:
        e.disk = on_disk
        self._sync(e)

    def set_writing(self, e: PageEntry, writing: bool) -> None:
        e.writing = writing
        self._sync(e)

    def set_restoring(self, e: PageEntry, restoring: bool) -> None:
        e.restoring = restoring
        self._sync(e)

    def pin(self, e: PageEntry) -> None:
        e.refcount += 1
        self.touch(e)

    def unpin(self, e: PageEntry) -> None:
        assert e.refcount > 0, "unpinning a page nobody holds"
        e.refcount -= 1
        self.touch(e)

    def touch(self, e: PageEntry) -> None:
        """Mark as most recently used."""
        e.last_used = next(self._clock)
        self._sync(e)
        if e.hash in self._device_lru:
            self._device_lru.move_to_end(e.hash)
        if e.hash in self._host_lru:
            self._host_lru.move_to_end(e.hash)

    def _sync(self, e: PageEntry) -> None:
        """Keep LRU membership exact; drop an entry that no tier holds any more."""
        _member(self._device_lru, e, e.device is not None and e.refcount == 0)
        _member(self._host_lru, e, e.host is not None and not (e.writing or e.restoring))
        if e.device is None and e.host is None and not e.disk and not e.writing:
            assert e.refcount == 0, "a pinned page lost its last copy"
            self._entries.pop(e.hash, None)

    # -- eviction candidates -------------------------------------------------------------------

    def lru_device(self) -> PageEntry | None:
        """The least recently used unpinned entry with a device copy, if any."""
        return next(iter(self._device_lru.values()), None)

    def lru_host(self) -> PageEntry | None:
        """The least recently used entry with an idle host copy, if any."""
        return next(iter(self._host_lru.values()), None)

    @property
    def num_device_evictable(self) -> int:
        return len(self._device_lru)

    @property
    def num_host_evictable(self) -> int:
        return len(self._host_lru)

    def check(self) -> None:
        """Assert the invariants (for tests and idle-time checks)."""
        for h, e in self._entries.items():
            assert e.hash == h
            assert e.device is None or self._by_device[e.device] is e
            assert e.host is None or self._by_host[e.host] is e
            assert (h in self._device_lru) == (e.device is not None and e.refcount == 0)
            assert (h in self._host_lru) == (e.host is not None and not (e.writing or e.restoring))
        assert all(self._entries.get(e.hash) is e for e in self._by_device.values())
        assert all(self._entries.get(e.hash) is e for e in self._by_host.values())


def _member(lru: OrderedDict[bytes, PageEntry], e: PageEntry, wanted: bool) -> None:
    if wanted and e.hash not in lru:
        lru[e.hash] = e
    elif not wanted:
        lru.pop(e.hash, None)
