"""Write-through: one background thread that makes sealed pages durable on the disk tier.

The caller copies a sealed page device -> host first (so the device page may be reused) and
submits the host slot with the event that completes that copy; the worker waits on the event,
never the decode thread. The host slot must stay untouched until the job is reported done.

Backpressure: the queue holds at most `max_pending` pages. `submit` never blocks: when the queue
is full it returns False and the caller keeps the page as unwritten, to be submitted again by
`flush` (turn end) with `submit_blocking`. So decode never waits on the disk, memory for staged
pages is bounded, and `flush` is where a slow disk is felt.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from memory.disk_tier import DiskTier

log = logging.getLogger(__name__)

_BATCH = 32  # pages per group commit (one fsync per directory per batch)


@dataclass(slots=True)
class WriteJob:
    """One page to write: its hash, the host slot holding it, and its bytes (a view)."""

    hash: bytes
    slot: int
    payload: np.ndarray
    ready: torch.cuda.Event | None = None  # the device -> host copy; None when already done
    stamp: float = 0.0  # the page file's mtime (PageEntry.stamp); 0: the time of writing


class WriteThrough:
    """A single worker draining a bounded queue of WriteJobs into a DiskTier.

    Results come back through `completed()` as `(hash, slot, ok)`, polled by the owner's
    thread, so the owner's state is only ever touched by the owner. Errors are logged and
    reported as `ok=False`, never raised.
    """

    def __init__(self, disk: DiskTier, max_pending: int = 64):
        self.disk = disk
        self._q: queue.Queue[WriteJob | None] = queue.Queue(maxsize=max_pending)
        self._done: deque[tuple[bytes, int, bool]] = deque()
        self._thread = threading.Thread(target=self._run, name="kv-write-through", daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> bool:
        """Queue a page without waiting; False if the queue is full (the caller retries)."""
        try:
            self._q.put_nowait(job)
            return True
        except queue.Full:
            return False

    def submit_blocking(self, job: WriteJob) -> None:
        """Queue a page, waiting for room."""
        self._q.put(job)

    def completed(self) -> list[tuple[bytes, int, bool]]:
        """Jobs finished since the last call: (hash, slot, written)."""
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def flush(self) -> None:
        """Wait until every submitted page is durable (or has failed)."""
        self._q.join()

    def close(self) -> None:
        """Finish what is queued and stop the worker."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._write(batch)
            finally:
                for _ in batch:
                    self._q.task_done()

    def _take_batch(self) -> list[WriteJob] | None:
        first = self._q.get()
        if first is None:
            self._q.task_done()
            return None
        batch = [first]
        while len(batch) < _BATCH:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close() came in: finish this batch, then stop
                self._q.task_done()
                self._q.put(None)
                break
            batch.append(job)
        return batch

    def _write(self, batch: list[WriteJob]) -> None:
        try:
            for job in batch:
                if job.ready is not None:
                    job.ready.synchronize()
            ok = self.disk.write_many([(j.hash, j.payload) for j in batch],
                                      [j.stamp for j in batch])
        except Exception:
            log.exception("KV write-through failed for %d pages", len(batch))
            ok = [False] * len(batch)
        for job, written in zip(batch, ok, strict=True):
            self._done.append((job.hash, job.slot, written))
