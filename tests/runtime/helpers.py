"""A minimal paged runner for model tests: chunked prefill and greedy decode of one sequence.

Not the engine (runtime/engine/ is): just enough paging to drive `CausalLM.forward` through
`build_metadata`, `ForwardContext` and the torch reference backend over a `DevicePagePool`.
"""

from __future__ import annotations

import torch
from torch import nn

from memory.device_pool import DevicePagePool
from memory.kv_layout import KVLayout
from runtime.config import ModelConfig
from runtime.engine.metadata import build_metadata
from runtime.forward_context import ForwardContext
from runtime.kernels.torch_ref import TorchReferenceBackend


class PagedRunner:
    """One sequence over a pool of `page_size`-token pages; its block table grows as it goes."""

    def __init__(
        self,
        model: nn.Module,
        cfg: ModelConfig,
        page_size: int = 16,
        num_pages: int = 64,
        dtype: torch.dtype = torch.float32,
    ):
        layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size, dtype)
        self.model = model
        self.pool = DevicePagePool(layout, num_pages)
        self.backend = TorchReferenceBackend()
        self.page_size = page_size
        self.pages: list[int] = []
        self.tokens: list[int] = []

    @torch.inference_mode()
    def extend(self, ids: list[int]) -> torch.Tensor:
        """Append `ids` in one forward; logits `(len(ids), vocab)` float32 of the new positions."""
        start, end = len(self.tokens), len(self.tokens) + len(ids)
        need = -(-end // self.page_size) - len(self.pages)
        if need > 0:
            self.pages += self.pool.alloc(need)
        meta = build_metadata([self.pages], [end], [len(ids)], self.page_size, torch.device("cpu"))
        ctx = ForwardContext(self.backend, self.pool.layer_views(), meta)
        hidden = self.model(torch.tensor(ids), torch.arange(start, end), ctx)
        self.tokens += ids
        return self.model.compute_logits(hidden)

    def prefill(self, ids: list[int], chunks: list[int]) -> torch.Tensor:
        """Extend by `ids` cut into chunks of the given sizes (the last one takes the rest)."""
        logits, pos = [], 0
        for size in [*chunks, len(ids)]:
            if pos >= len(ids):
                break
            logits.append(self.extend(ids[pos : pos + size]))
            pos += size
        return torch.cat(logits)

    def greedy(self, prompt: list[int], n: int, chunks: list[int] = ()) -> list[int]:
        """Prefill `prompt`, then decode `n` tokens by argmax, one forward per token."""
        last = self.prefill(prompt, list(chunks))[-1]
        out: list[int] = []
        for _ in range(n):
            out.append(int(last.argmax()))
            last = self.extend(out[-1:])[-1]
        return out
