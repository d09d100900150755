"""The disk tier: round trips, corruption detection, crash safety, sharing, a bad directory, gc."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from memory import disk_tier
from memory.disk_tier import HEADER_BYTES, DiskTier

FP = bytes(range(32))
OTHER_FP = bytes(range(1, 33))
PAGE = 4096
REPO = Path(__file__).resolve().parents[2]


def h(i: int) -> bytes:
    return i.to_bytes(32, "big")


def payload(i: int, size: int = PAGE) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8)


def read(tier: DiskTier, i: int) -> np.ndarray | None:
    return tier.read(h(i))


@pytest.fixture
def tier(tmp_path: Path) -> DiskTier:
    t = DiskTier(tmp_path, FP, PAGE)
    yield t
    t.close()


def test_round_trip_and_layout(tier: DiskTier, tmp_path: Path):
    assert not tier.contains(h(1)) and read(tier, 1) is None
    assert tier.stats().files == 0 and not (tmp_path / "kv").exists()  # made on first write
    assert tier.write(h(1), payload(1))
    hx = h(1).hex()
    assert tier.path(h(1)) == tmp_path / "kv" / FP.hex()[:16] / hx[:2] / f"{hx}.page"
    assert tier.path(h(1)).stat().st_size == HEADER_BYTES + PAGE
    assert np.array_equal(read(tier, 1), payload(1))


def test_bulk_read_many(tier: DiskTier):
    assert all(tier.write_many([(h(i), payload(i)) for i in range(20)]))
    outs = [np.empty(PAGE, np.uint8) for _ in range(21)]
    ok = tier.read_many([h(i) for i in range(21)], outs)
    assert ok == [True] * 20 + [False]
    assert all(np.array_equal(outs[i], payload(i)) for i in range(20))


def test_equal_pages_are_stored_once(tier: DiskTier, tmp_path: Path):
    assert tier.write(h(1), payload(1)) and tier.write(h(1), payload(1))
    assert tier.counters["deduped"] == 1
    assert tier.stats().files == 1


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: HEADER_BYTES + PAGE // 2]
    elif how == "flip_payload":
        data[HEADER_BYTES + 100] ^= 0x04
    elif how == "flip_header":
        data[20] ^= 0x01
    elif how == "empty":
        data = b""
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip_payload", "flip_header", "empty"])
def test_damaged_file_is_detected_and_removed(tier: DiskTier, how: str, caplog):
    tier.write(h(1), payload(1))
    corrupt(tier.path(h(1)), how)
    with caplog.at_level(logging.WARNING, logger="memory.disk_tier"):
        assert read(tier, 1) is None
    assert "recomputed" in caplog.text
    assert not tier.path(h(1)).exists() and tier.counters["corrupt"] == 1


def test_file_of_another_fingerprint_or_page_is_rejected(tmp_path: Path, tier: DiskTier):
    other = DiskTier(tmp_path, OTHER_FP, PAGE)
    other.write(h(1), payload(1))
    assert not tier.contains(h(1)) and read(tier, 1) is None  # different directory
    # Even copied into place, the header names the other model (or the other page).
    tier.path(h(1)).parent.mkdir(parents=True, exist_ok=True)
    tier.path(h(1)).write_bytes(other.path(h(1)).read_bytes())
    assert read(tier, 1) is None and tier.counters["corrupt"] == 1
    tier.write(h(2), payload(2))
    tier.path(h(3)).parent.mkdir(parents=True, exist_ok=True)
    tier.path(h(3)).write_bytes(tier.path(h(2)).read_bytes())
    assert read(tier, 3) is None
    other.close()


def test_wrong_page_size_is_rejected(tmp_path: Path, tier: DiskTier):
    tier.write(h(1), payload(1))
    small = DiskTier(tmp_path, FP, PAGE // 2)
    out = np.empty(PAGE // 2, np.uint8)
    assert not small.read_into(h(1), out)
    small.close()


_CRASH_WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from pathlib import Path
    from memory.disk_tier import DiskTier
    real_write = os.write
    def slow_write(fd, data):  # dribble the payload so the kill lands mid-write
        n = real_write(fd, memoryview(data)[:65536])
        print("writing", flush=True)
        time.sleep(0.01)
        return n
    os.write = slow_write
    tier = DiskTier(Path(sys.argv[1]), bytes(range(32)), 64 << 20)
    tier.write((7).to_bytes(32, "big"), np.full(64 << 20, 7, np.uint8))
    print("finished", flush=True)
""")


def test_sigkill_mid_write_leaves_nothing_trusted(tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    for _ in range(5):
        assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    tier = DiskTier(tmp_path, FP, 64 << 20)
    assert not tier.contains(h(7))
    assert tier.read_into(h(7), np.empty(64 << 20, np.uint8)) is False
    stats = tier.stats()
    assert stats.files == 0 and stats.tmp_files == 1
    tier.gc(1 << 40)  # a young temp file may belong to a live writer: kept
    assert tier.stats().tmp_files == 1
    tier.gc(1 << 40, tmp_max_age=0)
    assert tier.stats().tmp_files == 0
    tier.close()


_SHARED_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from pathlib import Path
    from memory.disk_tier import DiskTier
    root, me = Path(sys.argv[1]), int(sys.argv[2])
    tier = DiskTier(root, bytes(range(32)), 65536)
    def page(i):
        return np.random.default_rng(i).integers(0, 256, 65536, dtype=np.uint8)
    mine = [1000 * (me + 1) + i for i in range(30)]
    bad = 0
    for rnd in range(3):
        for i in list(range(30)) + mine:  # 0..29 are written by every process
            if not tier.write(i.to_bytes(32, "big"), page(i)):
                bad += 1
            out = np.empty(65536, np.uint8)
            j = (i * 7 + rnd) % 30
            if tier.read_into(j.to_bytes(32, "big"), out) and not np.array_equal(out, page(j)):
                bad += 1
    print(bad, tier.counters["corrupt"], flush=True)
""")


def test_processes_share_one_directory(tmp_path: Path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SHARED_WRITER, str(tmp_path), str(k)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for k in range(3)
    ]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert results == [["0", "0"]] * 3
    tier = DiskTier(tmp_path, FP, 65536)
    stats = tier.stats()
    assert stats.files == 30 + 3 * 30 and stats.tmp_files == 0
    out = np.empty(65536, np.uint8)
    for i in list(range(30)) + [1000 * (k + 1) + i for k in range(3) for i in range(30)]:
        assert tier.read_into(h(i), out)
        assert np.array_equal(out, np.random.default_rng(i).integers(0, 256, 65536, np.uint8))
    tier.close()


def test_directory_under_a_file_disables_writes_once(tmp_path: Path, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="memory.disk_tier"):
        tier = DiskTier(blocker / "cache", FP, PAGE)
        assert tier.write(h(1), payload(1)) is False
        assert not tier.writable
        assert tier.write(h(2), payload(2)) is False
        assert read(tier, 1) is None
    assert caplog.text.count("disabled") == 1
    tier.close()


def test_disk_full_disables_writes_once(tier: DiskTier, monkeypatch, caplog):
    real_open = os.open

    def full(path, flags, *args, **kw):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(disk_tier.os, "open", full)
    with caplog.at_level(logging.WARNING, logger="memory.disk_tier"):
        assert tier.write(h(1), payload(1)) is False
        assert tier.write(h(2), payload(2)) is False
    assert caplog.text.count("disabled") == 1 and "No space left" in caplog.text
    assert not tier.writable and tier.stats().tmp_files == 0


def test_gc_keeps_the_most_recently_used_under_the_limit(tier: DiskTier):
    file_bytes = HEADER_BYTES + PAGE
    now = time.time()
    for i in range(10):
        tier.write(h(i), payload(i))
        os.utime(tier.path(h(i)), (now - 1000 + i, now - 1000 + i))
    assert read(tier, 0) is not None  # a read is a use: page 0 becomes the newest
    res = tier.gc(4 * file_bytes)
    assert res.removed_files == 6 and res.remaining_bytes == 4 * file_bytes
    kept = sorted(i for i in range(10) if tier.contains(h(i)))
    assert kept == [0, 7, 8, 9]
    assert tier.stats().bytes == 4 * file_bytes


def test_auto_gc_past_max_bytes(tmp_path: Path):
    file_bytes = HEADER_BYTES + PAGE
    tier = DiskTier(tmp_path, FP, PAGE, max_bytes=10 * file_bytes)
    for i in range(30):
        tier.write(h(i), payload(i))
    assert tier.stats().bytes <= 10 * file_bytes
    assert tier.contains(h(29))
    tier.close()


def test_clear_and_stats_across_fingerprints(tmp_path: Path, tier: DiskTier):
    other = DiskTier(tmp_path, OTHER_FP, PAGE)
    tier.write(h(1), payload(1))
    other.write(h(1), payload(1))
    other.write(h(2), payload(2))
    s = tier.stats()
    assert (s.files, s.own_files, s.own_bytes) == (3, 1, HEADER_BYTES + PAGE)
    other.clear()
    assert tier.stats().files == 1 and tier.contains(h(1))
    tier.clear(all_models=True)
    assert tier.stats().files == 0
    assert tier.write(h(3), payload(3))  # still usable after clearing
    other.close()
