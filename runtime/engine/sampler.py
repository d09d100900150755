"""Turn a batch of logits into next tokens: greedy, temperature, top-k, top-p, seeded."""

from __future__ import annotations

import torch

from runtime.engine.sampling import SamplingParams


class Sampler:
    """Samples one token per row. Each request gets its own generator, so a seed reproduces."""

    def __init__(self) -> None:
        self._generators: dict[int, torch.Generator] = {}

    def start(self, request_id: int, params: SamplingParams, device: torch.device) -> None:
        """Create the request's generator (seeded if asked)."""
        gen = torch.Generator(device=device)
        if params.seed is not None:
            gen.manual_seed(params.seed)
        else:
            gen.seed()
        self._generators[request_id] = gen

    def finish(self, request_id: int) -> None:
        self._generators.pop(request_id, None)

    def sample(
        self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[int]
    ) -> list[int]:
        """logits (B, vocab) float32 -> one token id per row."""
        return self.sample_on_device(logits, params, request_ids).tolist()

    def sample_on_device(
        self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[int]
    ) -> torch.Tensor:
        """Like `sample`, but the ids stay on logits' device `(B,)` int64: no host sync, so
        the next forward can be queued before the host sees them (constraints excepted: their
        masks are host work)."""
        if any(p.constraint is not None for p in params):
            logits = _apply_constraints(logits, params)
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1)
        return torch.cat([self._sample_row(row, p, self._generators[rid])
                          for row, p, rid in zip(logits, params, request_ids)])

    @staticmethod
    def _sample_row(row: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> torch.Tensor:
        """One row's token as a `(1,)` tensor on the row's device."""
        if p.greedy:
            return row.argmax().view(1)
        row = row.float() / p.temperature
        if p.top_k > 0:
            kth = torch.topk(row, min(p.top_k, row.numel())).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            probs = _top_p_filter(probs, p.top_p)
        return torch.multinomial(probs, 1, generator=gen)


def _apply_constraints(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    logits = logits.clone()
    for row, p in zip(logits, params):
        mask = p.constraint.allowed(row.numel()) if p.constraint is not None else None
        if mask is not None:
            if row.is_cuda:  # from pinned memory the upload does not wait for the GPU
                mask = mask.pin_memory().to(row.device, non_blocking=True)
            row.masked_fill_(~mask, float("-inf"))
    return logits


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches top_p (the top token always stays)."""
    sorted_p, idx = probs.sort(descending=True)
    cum = sorted_p.cumsum(0)
    drop = (cum - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    kept = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
    return kept / kept.sum()
