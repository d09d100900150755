"""What the engine needs from KV memory, and the simplest implementation (no prefix reuse)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol

from memory.device_pool import DevicePagePool


@dataclass
class Acquired:
    """Device pages now holding the longest cached prefix, pinned for the caller."""

    pages: list[int] = field(default_factory=list)
    by_tier: dict[str, int] = field(default_factory=dict)  # tier name -> pages served from it


class KVPages(Protocol):
    """The engine's view of KV memory.

    Contract: page ids index `pool.data`. `alloc` returns private, pinned pages (raises
    OutOfPages when nothing can be freed). `seal(page, h)` publishes a full private page under
    chain hash h and returns the id the caller must use from now on (the same page, or an
    already cached copy, in which case the caller's page is freed). `pin` adds a holder to
    pages (forks share sealed pages); `release` drops one holder. Sealed pages are immutable.
    """

    pool: DevicePagePool
    prefix_caching: bool

    def page_hash(self, prev: bytes | None, tokens: Seq[int]) -> bytes: ...

    def acquire(self, hashes: list[bytes]) -> Acquired: ...

    def alloc(self, n: int) -> list[int]: ...

    def seal(self, page: int, h: bytes, stamp: float = 0.0) -> int: ...

    def pin(self, pages: list[int]) -> None: ...

    def release(self, pages: list[int]) -> None: ...

    def flush(self) -> None: ...


class PrivatePages:
    """Pages owned by sequences only: no prefix index, no tiers. Forks share by refcount."""

    prefix_caching = False

    def __init__(self, pool: DevicePagePool):
        self.pool = pool
        self._refs: dict[int, int] = {}

    def page_hash(self, prev: bytes | None, tokens: Seq[int]) -> bytes:
        return b""  # nothing is looked up by hash here

    def acquire(self, hashes: list[bytes]) -> Acquired:
        return Acquired()

    def alloc(self, n: int) -> list[int]:
        pages = self.pool.alloc(n)  # PagePoolExhausted: the engine turns it into OutOfPages
        for p in pages:
            self._refs[p] = 1
        return pages

    def seal(self, page: int, h: bytes, stamp: float = 0.0) -> int:
        return page

    def pin(self, pages: list[int]) -> None:
        for p in pages:
            self._refs[p] += 1

    def release(self, pages: list[int]) -> None:
        freed = []
        for p in pages:
            self._refs[p] -= 1
            if self._refs[p] == 0:
                del self._refs[p]
                freed.append(p)
        self.pool.free(freed)

    def flush(self) -> None:
        return None
