"""Names for KV pages: the model fingerprint and the hash chain over full pages.

`h_0 = H(fingerprint, tokens of page 0)`, `h_i = H(h_{i-1}, tokens of page i)`. A page's hash thus
names the whole prefix up to and including it, under one model, dtype, KV layout and rope config:
equal prefixes get equal names across sessions and processes, and a different fingerprint never
names the same page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from memory.kv_layout import KVLayout

HASH_BYTES = 32
_FINGERPRINT_PERSON = b"ra-kv-model"
_PAGE_PERSON = b"ra-kv-page"


def model_fingerprint(
    weights_id: str, dtype: torch.dtype | str, kv_layout: KVLayout, rope: str, layout_version: int
) -> bytes:
    """A 32-byte name for everything that decides the bytes of a KV page.

    `weights_id` names the exact weights (a content hash or a pinned revision, not a mutable
    tag), `dtype` is the compute dtype, `kv_layout` carries the KV dtype and page shape, `rope` is
    the rope config as a canonical string, `layout_version` is bumped whenever the KV code changes
    what it writes into a page.
    """
    dt = str(dtype).removeprefix("torch.")
    text = "\n".join(
        [
            f"weights={weights_id}",
            f"dtype={dt}",
            f"kv={kv_layout.describe()}",
            f"rope={rope}",
            f"layout_version={layout_version}",
        ]
    )
    return hashlib.blake2b(
        text.encode(), digest_size=HASH_BYTES, person=_FINGERPRINT_PERSON
    ).digest()


def _pack(tokens: Sequence[int] | np.ndarray) -> bytes:
    """Token ids as int32 little-endian bytes (numpy, not a per-token Python loop)."""
    return np.asarray(tokens, dtype="<i4").tobytes()


def page_hash(prev: bytes, tokens: Sequence[int] | np.ndarray) -> bytes:
    """The chain link: H(prev, tokens of this page)."""
    assert len(prev) == HASH_BYTES, f"chain hashes are {HASH_BYTES} bytes, got {len(prev)}"
    h = hashlib.blake2b(prev, digest_size=HASH_BYTES, person=_PAGE_PERSON)
    h.update(_pack(tokens))
    return h.digest()


def chain_hashes(seed: bytes, tokens: Sequence[int] | np.ndarray, page_size: int) -> list[bytes]:
    """Hashes of every FULL page of `tokens`, chained from `seed` (the fingerprint)."""
    packed = np.asarray(tokens, dtype="<i4")
    n_full = len(packed) // page_size
    pages = packed[: n_full * page_size].reshape(n_full, page_size)  # (pages, page_size)
    out: list[bytes] = []
    prev = seed
    for row in pages:
        prev = page_hash(prev, row)
        out.append(prev)
    return out
