"""The page hash chain: deterministic, prefix-shaped, and separated by model fingerprint."""

from __future__ import annotations

import numpy as np
import torch

from memory.hashing import HASH_BYTES, chain_hashes, model_fingerprint, page_hash
from memory.kv_layout import KVLayout

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, page_size=4, dtype=torch.bfloat16)


def fp(**kw) -> bytes:
    args = {
        "weights_id": "sha256:abc",
        "dtype": torch.bfloat16,
        "kv_layout": LAYOUT,
        "rope": "theta=10000",
        "layout_version": 1,
    }
    return model_fingerprint(**{**args, **kw})


def test_fingerprint_is_deterministic_and_sensitive_to_every_input():
    base = fp()
    assert base == fp() and len(base) == HASH_BYTES
    other_layout = KVLayout(2, 2, 8, 8, torch.bfloat16)
    variants = [
        fp(weights_id="sha256:abd"),
        fp(dtype=torch.float16),
        fp(kv_layout=other_layout),
        fp(rope="theta=500000"),
        fp(layout_version=2),
    ]
    assert len({base, *variants}) == 6
    assert fp(dtype="torch.bfloat16") == fp(dtype="bfloat16") == base


def test_chain_matches_page_by_page_links():
    seed, tokens = fp(), list(range(1000, 1018))  # 4 full pages and 2 tokens
    chain = chain_hashes(seed, tokens, 4)
    assert len(chain) == 4
    prev = seed
    for i, h in enumerate(chain):
        prev = page_hash(prev, tokens[i * 4 : (i + 1) * 4])
        assert h == prev
    assert chain == chain_hashes(seed, np.array(tokens), 4)


def test_chain_names_the_whole_prefix():
    seed = fp()
    a = chain_hashes(seed, [1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = chain_hashes(seed, [9, 2, 3, 4, 5, 6, 7, 8], 4)
    c = chain_hashes(seed, [1, 2, 3, 4, 5, 6, 7, 9], 4)
    assert a[0] != b[0] and a[1] != b[1]  # an early change renames every later page
    assert a[0] == c[0] and a[1] != c[1]


def test_fingerprint_separates_chains():
    tokens = list(range(16))
    assert set(chain_hashes(fp(), tokens, 4)).isdisjoint(
        chain_hashes(fp(layout_version=2), tokens, 4)
    )


def test_token_packing_is_int32_little_endian():
    seed = fp()
    assert page_hash(seed, [1, 2, 3, 4]) == page_hash(seed, np.array([1, 2, 3, 4], dtype=">i8"))
    assert page_hash(seed, [256, 0, 0, 0]) != page_hash(seed, [1, 0, 0, 0])
    assert page_hash(seed, [2**31 - 1, 0, 0, 0]) != page_hash(seed, [-1, 0, 0, 0])
