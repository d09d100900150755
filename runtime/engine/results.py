"""What the engine reports back: the cost of an extend, a finished generation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExtendResult:
    """What one `extend` cost: tokens served from cache (by tier) versus computed."""

    new_tokens: int
    cached_tokens: int
    cached_by_tier: dict[str, int]
    computed_tokens: int
    seconds: float
    restore_seconds: float = 0.0  # of `seconds`, bringing cached pages and the tail back


@dataclass
class GenerationResult:
    """A finished generation of one sequence."""

    tokens: list[int]
    text: str
    finish_reason: str
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
