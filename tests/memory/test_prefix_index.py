"""The prefix index: longest-prefix match, pins, and exact per-tier LRU order."""

from __future__ import annotations

import pytest

from memory.prefix_index import PrefixIndex


def h(i: int) -> bytes:
    return i.to_bytes(32, "little")


def indexed(n: int) -> PrefixIndex:
    idx = PrefixIndex()
    for i in range(n):
        idx.set_device(idx.add(h(i)), i)
    return idx


def test_match_stops_at_first_miss():
    idx = indexed(3)
    assert [e.hash for e in idx.match([h(0), h(1), h(7), h(2)])] == [h(0), h(1)]
    assert idx.match([h(9)]) == []


def test_device_lru_skips_pinned_and_follows_use():
    idx = indexed(4)
    assert idx.lru_device().hash == h(0)
    idx.pin(idx.get(h(0)))
    assert idx.lru_device().hash == h(1)
    idx.touch(idx.get(h(1)))
    assert idx.lru_device().hash == h(2)
    idx.unpin(idx.get(h(0)))  # released: now the most recently used
    order = []
    while (e := idx.lru_device()) is not None:
        order.append(e.hash)
        idx.set_device(e, None)
        idx.set_disk(e, True)
    assert order == [h(2), h(3), h(1), h(0)]
    idx.check()


def test_host_lru_excludes_pages_being_written_or_restored():
    idx = PrefixIndex()
    a, b = idx.add(h(1)), idx.add(h(2))
    idx.set_host(a, 0)
    idx.set_host(b, 1)
    idx.set_writing(a, True)
    assert idx.lru_host() is b
    idx.set_restoring(b, True)
    assert idx.lru_host() is None
    idx.set_writing(a, False)
    assert idx.lru_host() is a
    idx.check()


def test_entry_without_any_copy_leaves_the_index():
    idx = indexed(1)
    e = idx.get(h(0))
    idx.set_host(e, 5)
    idx.set_device(e, None)
    assert h(0) in idx and idx.by_device(0) is None
    idx.set_host(e, None)
    assert h(0) not in idx and len(idx) == 0


def test_pinned_entry_cannot_lose_its_last_copy():
    idx = indexed(1)
    e = idx.get(h(0))
    idx.pin(e)
    with pytest.raises(AssertionError):
        idx.set_device(e, None)


def test_one_slot_holds_one_page():
    idx = indexed(1)
    with pytest.raises(AssertionError):
        idx.set_device(idx.add(h(1)), 0)
