"""A sequence: its token log, the KV pages that hold it, and a block table on the device."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch

_ids = itertools.count(1)


class BlockTable:
    """A sequence's page ids, mirrored in a device int32 tensor that grows by doubling.

    Appending a page writes one element; nothing is rebuilt per step, so a 1M-token sequence
    costs no per-page work on the decode path.
    """

    def __init__(self, device: torch.device, capacity: int = 16):
        self.pages: list[int] = []
        self._device = device
        self._table = torch.zeros(capacity, dtype=torch.int32, device=device)

    def __len__(self) -> int:
        return len(self.pages)

    @property
    def tensor(self) -> torch.Tensor:
        """The live prefix `(n_pages,)` of the device table (a view; valid until it grows)."""
        return self._table[: len(self.pages)]

    def append(self, new_pages: list[int]) -> None:
        need = len(self.pages) + len(new_pages)
        if need > self._table.numel():
            grown = torch.zeros(max(need, 2 * self._table.numel()), dtype=torch.int32,
                                device=self._device)
            grown[: len(self.pages)] = self._table[: len(self.pages)]
            self._table = grown
        start = len(self.pages)
        self._table[start:need] = torch.tensor(new_pages, dtype=torch.int32)
        self.pages.extend(new_pages)

    def replace(self, index: int, page: int) -> None:
        self.pages[index] = page
        self._table[index] = page

    def truncate(self, n_pages: int) -> list[int]:
        """Keep the first n_pages; return the ids dropped."""
        dropped = self.pages[n_pages:]
        del self.pages[n_pages:]
        return dropped

    def copy(self) -> BlockTable:
        other = BlockTable(self._device, max(16, self._table.numel()))
        other.append(list(self.pages))
        return other


@dataclass(slots=True, weakref_slot=True)  # weak refs: runtime/distributed/mirror.py
class Sequence:
    """One token log and its KV. Tokens past `num_computed` are pending (no KV yet).

    `hashes[i]` is the chain hash of page i once page i is full and sealed; sealed pages may be
    shared with other sequences and are never written again.
    """

    table: BlockTable
    tokens: list[int] = field(default_factory=list)
    num_computed: int = 0
    hashes: list[bytes] = field(default_factory=list)
    last_logits: torch.Tensor | None = None  # (vocab,) float32 for the last computed token
    seq_id: int = field(default_factory=lambda: next(_ids))
    # When the sequence began (or was resumed): its pages' last use on disk, less their depth.
    epoch: float = field(default_factory=time.time)

    @property
    def pages(self) -> list[int]:
        return self.table.pages

    @property
    def num_pending(self) -> int:
        return len(self.tokens) - self.num_computed

    def __len__(self) -> int:
        return len(self.tokens)
