"""What the ranks must agree on that each one would otherwise decide alone.

Every rank runs the same engine over its own share of the KV pages, so the engines stay in
step as long as the few inputs that are not the same everywhere are made the same: the
sampled tokens (rank 0 samples, the others receive them: `RankSampler`), the cache hits of
each rank's own tiers (the shortest prefix any rank holds: `AgreedKV`, `AgreedTails`) and a
constraint's verdict (rank 0's, sent over the link: `DrivenConstraint`, `FollowedConstraint`).
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.distributed.group import RankGroup
from runtime.distributed.link import Link
from runtime.engine.kv_pages import Acquired
from runtime.engine.sampler import Sampler


class RankSampler(Sampler):
    """Rank 0 samples (its own generators, seeds and constraints); every rank gets its ids."""

    def __init__(self, group: RankGroup):
        super().__init__()
        self.group = group

    def sample_on_device(self, logits, params, request_ids) -> torch.Tensor:
        if self.group.is_driver:
            tokens = super().sample_on_device(logits, params, request_ids)
        else:
            tokens = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
        return self.group.broadcast(tokens.contiguous())


class AgreedKV:
    """A rank's KV pages (TieredKVCache or PrivatePages) whose cache hits every rank shares.

    Each rank keeps its share of every page in its own tiers and disk files, so a page file
    can be missing or corrupt on one rank only; `acquire` then keeps the prefix every rank
    brought up and releases the rest, and the prefill recomputes it everywhere alike."""

    def __init__(self, inner: Any, group: RankGroup):
        self.inner = inner
        self.group = group
        tails = getattr(inner, "tails", None)
        self.tails = AgreedTails(tails, group) if tails is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def acquire(self, hashes: list[bytes]) -> Acquired:
        got = self.inner.acquire(hashes)
        (n,) = self.group.agree_min([len(got.pages)])
        if n < len(got.pages):
            self.inner.release(got.pages[n:])
            _drop_hits(got.by_tier, len(got.pages) - n)
            del got.pages[n:]
        return got


def _drop_hits(by_tier: dict[str, int], n: int) -> None:
    """Take `n` pages off the per-tier counts, slowest tier first (a chain's tail comes
    from the lowest tier)."""
    for tier in ("disk", "host", "device"):
        take = min(n, by_tier.get(tier, 0))
        if take:
            by_tier[tier] -= take
            n -= take
            if not by_tier[tier]:
                del by_tier[tier]


class AgreedTails:
    """A TailStore whose `find` returns a tail only when every rank found the same one."""

    def __init__(self, inner: Any, group: RankGroup):
        self.inner = inner
        self.group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def find(self, prev: bytes | None, tokens):
        tail = self.inner.find(prev, tokens)
        code = 0 if tail is None else 2 * (tail.num_tokens + 1) + (tail.logits is not None)
        low, neg_high = self.group.agree_min([code, -code])
        return tail if low == -neg_high else None


FOLLOWED = "constrained"  # what a follower receives in place of a constraint object


class DrivenConstraint:
    """Rank 0's constraint: itself, with each verdict of `finished()` sent to the followers."""

    def __init__(self, inner: Any, link: Link):
        self.inner = inner
        self.link = link

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def finished(self) -> bool:
        verdict = bool(self.inner.finished())
        self.link.send(("verdict", verdict))
        return verdict


class FollowedConstraint:
    """A follower's stand-in: masks are rank 0's business; verdicts come over the link."""

    def __init__(self, link: Link):
        self.link = link

    def advance(self, token: int) -> None:
        return None

    def allowed(self, vocab: int):
        raise AssertionError("a follower never samples")

    def finished(self) -> bool:
        return self.link.value("verdict")
