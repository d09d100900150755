"""What DeepSeek-V4 keeps per token and layer in its KV pages: one row of named fields.

Every V4 cache kind lives in the pages, so each is paged, hash-chained, moved between tiers,
shared by forks and cut by rewinds exactly like attention KV, with no per-sequence state:

- `kv`: the token's shared key/value (head_dim), read by the sliding window of every layer;
- `comp_kv`, `comp_gate`: the compressor's inputs for the token (2 x head_dim each in CSA
  layers, whose windows overlap; head_dim in HCA layers), read when its window closes;
- `entry`: the compressed entry of the window this token closes (written at the last token of
  every `rate`-token window, unused elsewhere);
- CSA only: `idx_kv`, `idx_gate` (the lightning indexer's compressor inputs, 2 x
  index_head_dim) and `idx_key` (its compressed key, at the window's last token).

Layers of other kinds leave the tail of the row unused: a page is `[layers, 1, P, 1, width]`
with `width` the widest layer's row. This trades memory for exactness and simplicity: the
window and compressor inputs of old tokens stay in their pages (about 6.5 x head_dim per token
and CSA layer, against the head_dim / rate a ring buffer plus compressed pages would keep).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import ModelConfig


@dataclass(frozen=True)
class RowFields:
    """Column ranges of one layer's row (None where the layer kind has no such field)."""

    kv: slice
    comp_kv: slice | None = None
    comp_gate: slice | None = None
    entry: slice | None = None
    idx_kv: slice | None = None
    idx_gate: slice | None = None
    idx_key: slice | None = None

    @property
    def width(self) -> int:
        return max(s.stop for s in (self.kv, self.comp_kv, self.comp_gate, self.entry,
                                    self.idx_kv, self.idx_gate, self.idx_key) if s is not None)


def _fields(sizes: list[tuple[str, int]]) -> RowFields:
    out, start = {}, 0
    for name, size in sizes:
        out[name] = slice(start, start + size)
        start += size
    return RowFields(**out)


def row_fields(cfg: ModelConfig, layer: int) -> RowFields:
    """The fields of layer `layer`'s row."""
    assert cfg.v4 is not None
    return _fields(cfg.v4.row_sizes(layer, cfg.head_dim))


def row_width(cfg: ModelConfig) -> int:
    """Elements per token and layer of a V4 page: the widest layer's row."""
    assert cfg.v4 is not None
    return cfg.v4.row_width(cfg.head_dim)
