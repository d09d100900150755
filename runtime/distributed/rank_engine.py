"""RankEngine: the one-GPU engine, run by every rank of a tensor-parallel group in step."""

from __future__ import annotations

from typing import Any

from runtime.distributed.agreement import AgreedKV, RankSampler
from runtime.distributed.context_parallel import ContextParallelRunner, ParallelScheduler
from runtime.distributed.group import RankGroup
from runtime.distributed.parallel_ops import ParallelOps
from runtime.engine.engine import Engine


class RankEngine(Engine):
    """One rank's engine: the same scheduling, sequences and page bookkeeping on every rank,
    over this rank's share of the weights and of every KV page.

    Rank 0 drives (mirror.py sends each call it gets to the others, which replay it), so
    every rank takes the same steps over the same tokens: the forwards meet in their
    collectives (parallel_ops.py), the sampled tokens come from rank 0 and cache hits are
    those of every rank (agreement.py). Page ids and hashes are each rank's own (its pool,
    its fingerprint, its disk files) and need not match: no rank ever reads another's.
    Long fresh prefills run context-parallel (context_parallel.py)."""

    def __init__(self, model: Any, kv: Any, backend: Any, *, group: RankGroup, cp_min: int,
                 **kwargs: Any):
        super().__init__(model, AgreedKV(kv, group), backend, **kwargs)
        self.group = group
        self.sampler = RankSampler(group)
        runner = self.runner
        runner.ops = ParallelOps(runner.ops, group)
        if runner.graphs is not None:
            runner.graphs.ops = runner.ops
        chunk, budget = self.config.prefill_chunk, self.config.max_batch_tokens
        self.runner = ContextParallelRunner(runner, group, cp_min, chunk)
        self.scheduler = ParallelScheduler(chunk, budget, cp_min, self.runner.fits)
