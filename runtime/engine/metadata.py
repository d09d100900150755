"""Build the AttentionMetadata of one forward from plain per-sequence lists."""

from __future__ import annotations

import torch

from runtime.kernels.backend import AttentionMetadata


def slots_for(pages: list[int], start: int, end: int, page_size: int) -> list[int]:
    """Flat slot ids of token positions `start..end-1` of a sequence holding `pages`."""
    return [pages[p // page_size] * page_size + p % page_size for p in range(start, end)]


def build_metadata(
    block_tables: list[list[int]],
    seq_lens: list[int],
    query_lens: list[int],
    page_size: int,
    device: torch.device,
) -> AttentionMetadata:
    """Metadata for sequences whose last `query_lens[b]` of `seq_lens[b]` tokens are new."""
    assert len(block_tables) == len(seq_lens) == len(query_lens), "one entry per sequence"
    slots: list[int] = []
    for pages, kv_len, q_len in zip(block_tables, seq_lens, query_lens):
        assert len(pages) * page_size >= kv_len, "block table too short for the sequence"
        slots += slots_for(pages, kv_len - q_len, kv_len, page_size)
    width = max(len(p) for p in block_tables)
    table = torch.zeros((len(block_tables), max(width, 1)), dtype=torch.int32)
    for b, pages in enumerate(block_tables):
        table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=table.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        page_size=page_size,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        seq_lens_cpu=list(seq_lens),
        query_lens_cpu=list(query_lens),
    )
