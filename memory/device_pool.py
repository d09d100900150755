"""The device tier: one tensor holding every KV page, and a free list of page ids."""

from __future__ import annotations

import math
import mmap

import numpy as np
import torch

from memory.kv_layout import KVLayout


class PagePoolExhausted(Exception):
    """No free page is left in the pool (the caller may evict and retry)."""


class DevicePagePool:
    """A pool of `num_pages` pages on `device`, shape `[num_pages, *layout.page_shape]`.

    Page ids are plain ints. `alloc` and `free` touch only the free list; the tensor is never
    reallocated, so views handed to kernels stay valid for the pool's lifetime.
    """

    def __init__(self, layout: KVLayout, num_pages: int, device: torch.device | str = "cpu"):
        assert num_pages > 0, "a page pool needs at least one page"
        self.layout = layout
        self.num_pages = num_pages
        self.device = torch.device(device)
        shape = (num_pages, *layout.page_shape)
        if self.device.type == "cpu":
            self.data = _zeros_on_demand(shape, layout.dtype)
        else:
            self.data = torch.zeros(shape, dtype=layout.dtype, device=device)
        # Pop from the end: low ids first, which keeps fresh sequences nearly contiguous.
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self._bytes: np.ndarray | None = None

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        """Take `n` free pages; raises PagePoolExhausted (taking none) if fewer are free."""
        if n > len(self._free):
            raise PagePoolExhausted(
                f"need {n} KV pages, {len(self._free)} free of {self.num_pages}"
            )
        taken = self._free[len(self._free) - n :]
        del self._free[len(self._free) - n :]
        return taken[::-1]

    def free(self, pages: list[int]) -> None:
        """Return pages to the free list. Their contents are left as they are."""
        self._free.extend(pages)

    def page_bytes(self, page: int) -> np.ndarray:
        """The raw bytes of one page (uint8, writable, no copy); CPU pools only, for reading
        page files straight into device memory."""
        assert self.device.type == "cpu", "page_bytes needs a CPU pool; go through host memory"
        if self._bytes is None:
            flat = self.data.view(-1).view(torch.uint8)
            self._bytes = flat.numpy().reshape(self.num_pages, self.layout.page_bytes)
        return self._bytes[page]

    def layer_views(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the (k, v) views `[num_pages, page_size, kv_heads, head_dim]` (strided);
        a one-plane layout (latent rows) gives its plane twice."""
        v = self.layout.planes - 1
        return [(self.data[:, i, 0], self.data[:, i, v]) for i in range(self.layout.num_layers)]

    def copy_page(self, src: int, dst: int) -> None:
        """Copy one whole page (all layers) within the pool; used for copy-on-write forks."""
        self.data[dst].copy_(self.data[src])


def _zeros_on_demand(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros in anonymous memory: the OS maps each page when first written, so a CPU pool
    costs resident memory only for the context in use (torch.zeros would touch it all)."""
    nbytes = math.prod(shape) * dtype.itemsize
    buf = mmap.mmap(-1, max(nbytes, 1))
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)
