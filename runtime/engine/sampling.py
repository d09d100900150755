"""Sampling parameters, validated where they enter the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidSampling


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # stop strings (the text stops before them)
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's end-of-turn ids
    ignore_eos: bool = False
    # A TokenConstraint (runtime/engine/constraint.py) for this generation only, or None.
    constraint: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and self.temperature <= 100.0):
            raise InvalidSampling(f"temperature must be in [0, 100], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidSampling(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidSampling(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if self.max_tokens < 1:
            raise InvalidSampling(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.seed is not None and self.seed < 0:
            raise InvalidSampling(f"seed must be >= 0, got {self.seed}")
        if any(not s for s in self.stop):
            raise InvalidSampling("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
