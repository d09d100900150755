"""Snapshots of a hybrid model's linear-layer states, named by the chain hash of the page they
follow, so a sequence can resume, fork or rewind at a page boundary without recomputing its
whole prefix.

A snapshot is the state of every linear layer after the last token of sealed page i (the
conv inputs and the fp32 recurrent matrices, a dict of CPU tensors). It is taken every
`every_pages` pages, `interval_for` picking the smallest k that keeps snapshots at most a
quarter of the KV bytes of the k pages they cover. From the shapes of Qwen3-Next-80B (36
DeltaNet layers of 32 value heads of 128 x 128 in fp32, 12 attention layers of 2 KV heads of
256 in bf16): a snapshot is ~74 MiB, a 256-token page of its attention KV 6 MiB, so k = 50
and a restore recomputes at most 12.8K tokens (about 1 s of an H200). Snapshots sit in host
memory (an LRU of `host_max` entries) and, with a disk tier, beside the page files as
`<hash>.state`, written atomically in the background and verified on read (magic,
fingerprint, hash, length, crc32); a bad file is deleted and the state recomputed.

    magic 8s | fingerprint 32s | page hash 32s | payload bytes u64 | crc32 of payload u32
    payload: torch.save of the state dict (tensors only)
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

from memory.background_writer import BackgroundWriter
from memory.disk_tier import DiskTier, read_side_file

log = logging.getLogger(__name__)

MAGIC = b"RASTATE1"
SUFFIX = ".state"
_HEAD = struct.Struct("<8s32s32sQI")
Snapshot = dict[str, torch.Tensor]


def interval_for(state_bytes: int, page_bytes: int, overhead: float = 0.25) -> int:
    """The smallest k with `state_bytes <= overhead * k * page_bytes` (at least 1)."""
    return max(1, -(-state_bytes // max(1, int(overhead * page_bytes))))


class StateSnapshotStore:
    """Snapshots by page hash: host LRU, then disk (see the module doc). Never raises for I/O."""

    def __init__(self, disk: DiskTier | None, every_pages: int | None = None,
                 host_max: int = 64):
        self.disk = disk
        self.every_pages = every_pages  # None: the engine sets it with `interval_for`
        self.host_max = host_max
        self._host: OrderedDict[bytes, Snapshot] = OrderedDict()
        self._writer = BackgroundWriter("state-snapshot-write")

    def path(self, h: bytes) -> Path | None:
        return None if self.disk is None else self.disk.path(h).with_suffix(SUFFIX)

    def wants(self, n_pages: int) -> bool:
        """Whether the state after `n_pages` full pages is snapshotted."""
        return n_pages > 0 and n_pages % (self.every_pages or 1) == 0

    def save(self, h: bytes, snap: Snapshot) -> None:
        """Keep `snap` (CPU tensors the caller no longer writes) as the state after page `h`."""
        if h in self._host:
            self._host.move_to_end(h)
            return
        self._remember(h, snap)
        path = self.path(h)
        if path is not None and self.disk.writable and not path.exists():
            self._writer.submit(self._write, h, path, snap)

    def _remember(self, h: bytes, snap: Snapshot) -> None:
        self._host[h] = snap
        while len(self._host) > self.host_max:
            self._host.popitem(last=False)

    def _write(self, h: bytes, path: Path, snap: Snapshot) -> None:
        buf = io.BytesIO()
        torch.save(snap, buf)
        payload = buf.getvalue()
        head = _HEAD.pack(MAGIC, self.disk.fingerprint, h, len(payload), zlib.crc32(payload))
        if self.disk.write_file(path, (head, payload)):
            self.disk.account_bytes(len(head) + len(payload))

    def load(self, h: bytes) -> Snapshot | None:
        """The snapshot after page `h`, from host memory or disk; None if absent or corrupt."""
        if h in self._host:
            self._host.move_to_end(h)
            return self._host[h]
        path = self.path(h)
        if path is None:
            return None
        data = read_side_file(path, "state snapshot")
        if data is None:
            return None
        snap, problem = self._parse(data, h)
        if problem:
            log.warning("state snapshot %s is %s; deleted, the state will be recomputed",
                        path, problem)
            path.unlink(missing_ok=True)
            return None
        self._remember(h, snap)
        return snap

    def _parse(self, data: bytes, h: bytes) -> tuple[Snapshot | None, str | None]:
        if len(data) < _HEAD.size:
            return None, "truncated (short header)"
        magic, fp, name, size, crc = _HEAD.unpack_from(data)
        if magic != MAGIC or fp != self.disk.fingerprint or name != h:
            return None, "not a snapshot of this model and page"
        payload = data[_HEAD.size :]
        if len(payload) != size or zlib.crc32(payload) != crc:
            return None, "corrupt (payload length or checksum mismatch)"
        try:
            return torch.load(io.BytesIO(payload), weights_only=True), None
        except Exception as e:  # a checksummed payload that still fails to load: say why
            return None, f"unloadable ({e})"

    def forget_host(self) -> None:
        """Drop the host copies (as a new process starts without them)."""
        self._host.clear()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
