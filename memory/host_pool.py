"""The host tier: page slots in host memory (pinned on CUDA), a free list, and tier copies.

Copies between the device pool and host slots run on a dedicated CUDA stream, non-blocking, and
are ordered against the compute stream with events: the copy stream waits for the kernels that
wrote a page, and the compute stream waits for a copy before it reads restored pages or reuses a
page being copied out. On CPU every copy is synchronous and the fences are no-ops.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from memory.kv_layout import KVLayout

log = logging.getLogger(__name__)

_PRUNE_FENCES_AT = 1024  # completed events are dropped once this many are kept
CHUNK_BYTES = 1 << 30  # host memory is allocated (and pinned) a chunk at a time, when first used
# Chunks pinned ahead of the slots in use, on a background thread: pinning runs at about
# 1 GB/s, slower than a prefill fills pages, so it must not wait until a slot is needed.
PIN_AHEAD = 4


class HostPagePool:
    """`num_pages` slots of `layout.page_shape` in host memory.

    Slot ids are plain ints; `alloc`/`free` touch only the free list. Memory comes in chunks of
    about CHUNK_BYTES, allocated (pinned on CUDA) when `alloc` first hands out one of their
    slots, so a large host tier costs nothing at start-up; a chunk the host refuses to pin is
    pageable instead (one warning: copies are slower, nothing else changes). `slot(s)` is a
    slot's tensor, `slot_bytes(s)` a writable uint8 view of it for disk I/O; call `sync_slots`
    before the CPU reads or writes a slot that a copy may still be using.
    """

    def __init__(self, layout: KVLayout, num_pages: int, pin_memory: bool | None = None):
        assert num_pages > 0, "a host pool needs at least one page"
        self.layout = layout
        self.num_pages = num_pages
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._per_chunk = max(1, CHUNK_BYTES // layout.page_bytes)
        n_chunks = -(-num_pages // self._per_chunk)
        self._chunks: list[torch.Tensor | None] = [None] * n_chunks
        self._chunk_bytes: list[np.ndarray | None] = [None] * n_chunks
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self._stream: torch.cuda.Stream | None = None
        self._slot_fence: dict[int, torch.cuda.Event] = {}  # slot -> last copy touching it
        self._page_fence: dict[int, torch.cuda.Event] = {}  # device page -> copy reading it
        self._lock = threading.Lock()
        self._ahead: dict[int, Future] = {}
        self._pinner = ThreadPoolExecutor(1, thread_name_prefix="kv-host-pin") if self._pin \
            else None
        self._materialize(0)
        self._pin_ahead(0)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def allocated_bytes(self) -> int:
        """Host memory the chunks made so far hold."""
        return sum(c.numel() * c.element_size() for c in self._chunks if c is not None)

    def alloc(self, n: int) -> list[int]:
        """Take `n` free slots; asserts that enough are free (the caller evicts first)."""
        assert n <= len(self._free), f"need {n} host slots, {len(self._free)} free"
        taken = self._free[len(self._free) - n :]
        del self._free[len(self._free) - n :]
        chunks = {s // self._per_chunk for s in taken}
        for chunk in chunks:
            self._materialize(chunk)
        self._pin_ahead(max(chunks, default=0))
        return taken[::-1]

    def free(self, slots: list[int]) -> None:
        self._free.extend(slots)

    def slot(self, s: int) -> torch.Tensor:
        """One slot, `layout.page_shape` (a view into its chunk)."""
        return self._materialize(s // self._per_chunk)[s % self._per_chunk]

    def slot_bytes(self, slot: int) -> np.ndarray:
        """The raw bytes of one slot (uint8, writable, no copy)."""
        self._materialize(slot // self._per_chunk)
        return self._chunk_bytes[slot // self._per_chunk][slot % self._per_chunk]

    def _materialize(self, chunk: int) -> torch.Tensor:
        t = self._chunks[chunk]
        if t is not None:
            return t
        pending = self._ahead.pop(chunk, None)
        if pending is not None:
            pending.result()  # being pinned in the background: wait for it
            return self._chunks[chunk]
        return self._make(chunk)

    def _make(self, chunk: int) -> torch.Tensor:
        n = min(self._per_chunk, self.num_pages - chunk * self._per_chunk)
        t = self._allocate((n, *self.layout.page_shape))
        view = t.view(-1).view(torch.uint8).numpy().reshape(n, self.layout.page_bytes)
        with self._lock:
            self._chunk_bytes[chunk] = view  # shares memory
            self._chunks[chunk] = t
        return t

    def _pin_ahead(self, frontier: int) -> None:
        """Queue the chunks after `frontier` for pinning on the background thread."""
        if self._pinner is None:
            return
        last = min(frontier + PIN_AHEAD, len(self._chunks) - 1)
        for chunk in range(frontier + 1, last + 1):
            if self._chunks[chunk] is None and chunk not in self._ahead:
                self._ahead[chunk] = self._pinner.submit(self._make, chunk)

    def close(self) -> None:
        """Stop pinning ahead (the chunks stay until the pool goes)."""
        if self._pinner is not None:
            for f in self._ahead.values():
                f.cancel()
            self._pinner.shutdown(wait=True)
            self._ahead.clear()

    def _allocate(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self._pin:
            try:
                return torch.empty(shape, dtype=self.layout.dtype, pin_memory=True)
            except RuntimeError as e:
                with self._lock:
                    first, self._pin = self._pin, False
                if first:  # once, though the pinning thread may fail at the same time
                    log.warning("cannot pin more host memory for the KV host tier (%s); the "
                                "rest of it is pageable, which copies more slowly. Lower "
                                "--host-memory to stay within what the host can pin.",
                                str(e).splitlines()[0])
        return torch.empty(shape, dtype=self.layout.dtype)

    # -- copies ------------------------------------------------------------------------------

    def to_host(
        self, src: torch.Tensor, pages: list[int], slots: list[int]
    ) -> torch.cuda.Event | None:
        """Copy device pages `src[pages]` into `slots`; returns the event that completes it.

        The device pages must not be overwritten until the event: call `before_device_reuse`
        before handing them out again.
        """
        if src.device.type != "cuda":
            for p, s in zip(pages, slots, strict=True):
                self.slot(s).copy_(src[p])
            return None
        stream = self._copy_stream(src.device)
        stream.wait_stream(torch.cuda.current_stream(src.device))  # the kernels writing them
        with torch.cuda.stream(stream):
            for p, s in zip(pages, slots, strict=True):
                self.slot(s).copy_(src[p], non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(stream)
        self._fence(slots, pages, ev)
        return ev

    def to_device(self, slots: list[int], dst: torch.Tensor, pages: list[int]) -> None:
        """Copy `slots` into device pages `dst[pages]`; later work on the current stream sees
        them. The slots must not be written by the CPU before `sync_slots` says so."""
        if dst.device.type != "cuda":
            for s, p in zip(slots, pages, strict=True):
                dst[p].copy_(self.slot(s))
            return
        self.before_device_reuse(pages)
        current = torch.cuda.current_stream(dst.device)
        stream = self._copy_stream(dst.device)
        stream.wait_stream(current)  # whatever last used these device pages is done
        with torch.cuda.stream(stream):
            for s, p in zip(slots, pages, strict=True):
                dst[p].copy_(self.slot(s), non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(stream)
        current.wait_event(ev)
        self._fence(slots, [], ev)

    def fence(self, slot: int) -> torch.cuda.Event | None:
        """The event completing the last copy into or out of `slot` (None: nothing pending)."""
        return self._slot_fence.get(slot)

    def sync_slots(self, slots: list[int]) -> None:
        """Block the CPU until no copy uses these slots (before reading or writing them)."""
        for s in slots:
            ev = self._slot_fence.pop(s, None)
            if ev is not None:
                ev.synchronize()

    def before_device_reuse(self, pages: list[int]) -> None:
        """Order the compute stream after copies still reading these device pages."""
        for p in pages:
            ev = self._page_fence.pop(p, None)
            if ev is not None:
                torch.cuda.current_stream().wait_event(ev)

    def _copy_stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def _fence(self, slots: list[int], pages: list[int], ev: torch.cuda.Event) -> None:
        for s in slots:
            self._slot_fence[s] = ev
        for p in pages:
            self._page_fence[p] = ev
        if len(self._slot_fence) + len(self._page_fence) > _PRUNE_FENCES_AT:
            for fences in (self._slot_fence, self._page_fence):
                for k in [k for k, e in fences.items() if e.query()]:
                    del fences[k]
