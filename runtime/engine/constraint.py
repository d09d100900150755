"""The hook for constrained decoding: which tokens may come next, and what was chosen."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class TokenConstraint(ABC):
    """A per-request automaton over token ids (a grammar, a JSON schema).

    Contract: before each sampled token the engine calls `allowed(vocab_size)`, a bool mask of
    shape `(vocab_size,)` on the CPU (None: anything goes), and masks the logits with it; after
    sampling it calls `advance(token)`. When `finished()` turns True the engine ends the
    generation with finish reason "stop". One instance serves one generation; not thread-safe.
    """

    @abstractmethod
    def allowed(self, vocab_size: int) -> torch.Tensor | None:
        """Tokens that may come next, as a bool mask (None when unconstrained)."""

    @abstractmethod
    def advance(self, token: int) -> None:
        """Record the sampled token (it was allowed)."""

    @abstractmethod
    def finished(self) -> bool:
        """True once the constrained text is complete."""
