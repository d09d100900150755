"""Write-through: the worker makes pages durable, never raises, and reports back."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from memory.disk_tier import DiskTier
from memory.write_through import WriteJob, WriteThrough

FP = bytes(32)
PAGE = 1024


def job(i: int) -> WriteJob:
    return WriteJob(i.to_bytes(32, "big"), i, np.full(PAGE, i % 256, np.uint8))


def test_flush_waits_until_durable(tmp_path: Path):
    disk = DiskTier(tmp_path, FP, PAGE)
    wt = WriteThrough(disk, max_pending=4)
    for i in range(10):
        wt.submit_blocking(job(i))
    wt.flush()
    done = wt.completed()
    assert sorted(slot for _, slot, ok in done if ok) == list(range(10))
    assert all(disk.contains(i.to_bytes(32, "big")) for i in range(10))
    wt.close()
    disk.close()


def test_full_queue_refuses_without_blocking(tmp_path: Path):
    disk = DiskTier(tmp_path, FP, PAGE)
    gate = threading.Event()
    real = disk.write_many
    disk.write_many = lambda items, stamps=None: (gate.wait(), real(items, stamps))[1]
    wt = WriteThrough(disk, max_pending=2)
    accepted = [wt.submit(job(i)) for i in range(6)]
    assert accepted[:2] == [True, True] and not all(accepted)
    gate.set()
    wt.flush()
    assert len(wt.completed()) == sum(accepted)
    wt.close()
    disk.close()


def test_errors_are_reported_not_raised(tmp_path: Path, caplog):
    disk = DiskTier(tmp_path, FP, PAGE)

    def boom(items, stamps=None):
        raise RuntimeError("disk on fire")

    disk.write_many = boom
    wt = WriteThrough(disk)
    wt.submit_blocking(job(1))
    wt.flush()
    assert wt.completed() == [((1).to_bytes(32, "big"), 1, False)]
    assert "disk on fire" in caplog.text
    wt.close()
    disk.close()
