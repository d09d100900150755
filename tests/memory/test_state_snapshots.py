"""State snapshots by page hash: the interval rule, the host LRU, disk files verified on read."""

from __future__ import annotations

import torch

from memory.disk_tier import DiskTier
from memory.state_snapshots import StateSnapshotStore, interval_for

FP = b"s" * 32


def snap(v: float) -> dict[str, torch.Tensor]:
    return {"conv.0": torch.full((3, 2), v), "recurrent.0": torch.full((2, 4, 4), v)}


def store(tmp_path, host_max=8) -> StateSnapshotStore:
    return StateSnapshotStore(DiskTier(tmp_path, FP, 1024), every_pages=2, host_max=host_max)


def test_interval_keeps_snapshots_to_a_quarter_of_the_kv():
    assert interval_for(100, 1000) == 1
    assert interval_for(74 << 20, 6 << 20) == 50  # Qwen3-Next-80B's shapes, 256-token pages
    assert interval_for(0, 10) == 1


def test_wants_every_k_pages(tmp_path):
    s = store(tmp_path)
    assert [n for n in range(7) if s.wants(n)] == [2, 4, 6]


def test_host_lru_then_disk_after_a_restart(tmp_path):
    s = store(tmp_path, host_max=1)
    s.save(b"a" * 32, snap(1.0))
    s.save(b"b" * 32, snap(2.0))  # pushes a out of host memory; both on disk
    s.flush()
    assert torch.equal(s.load(b"a" * 32)["recurrent.0"], snap(1.0)["recurrent.0"])
    s.close()
    again = store(tmp_path)
    assert torch.equal(again.load(b"b" * 32)["conv.0"], snap(2.0)["conv.0"])
    assert again.load(b"c" * 32) is None
    again.close()


def test_corrupt_or_misnamed_files_are_deleted(tmp_path):
    s = store(tmp_path)
    s.save(b"a" * 32, snap(1.0))
    s.save(b"b" * 32, snap(2.0))
    s.close()
    a, b = s.path(b"a" * 32), s.path(b"b" * 32)
    data = bytearray(a.read_bytes())
    data[-1] ^= 1
    a.write_bytes(bytes(data))
    b.write_bytes(s.path(b"a" * 32).read_bytes()[:10])
    again = store(tmp_path)
    assert again.load(b"a" * 32) is None and not a.exists()
    assert again.load(b"b" * 32) is None and not b.exists()
    again.close()


def test_snapshot_files_count_toward_the_disk_budget_and_gc(tmp_path):
    s = store(tmp_path)
    s.save(b"a" * 32, snap(1.0))
    s.close()
    assert s.disk.stats().bytes > 0
    s.disk.gc(0)
    assert not s.path(b"a" * 32).exists()
