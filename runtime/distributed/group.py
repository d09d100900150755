"""RankGroup: this process's place in a tensor-parallel group and the collectives it uses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

# Collectives run only inside a command every rank executes together, so a long one is a
# long prefill, never an idle agent; an hour bounds a hang after a rank was lost.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


@dataclass
class RankGroup:
    """The ranks of one model: `rank` of `world`, tensors on `device`.

    Device tensors go through the default process group (NCCL on CUDA, gloo on the CPU);
    small host-side agreements (cache hits, the memory plan) through a gloo group, which
    also notices a rank that died instead of waiting out the timeout."""

    rank: int
    world: int
    device: torch.device
    cpu_group: dist.ProcessGroup | None = None

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: Tensor) -> Tensor:
        """Sum `x` over the ranks, in place; returns it."""
        dist.all_reduce(x)
        return x

    def broadcast(self, x: Tensor, src: int = 0) -> Tensor:
        """Rank `src`'s `x` on every rank, in place; returns it."""
        dist.broadcast(x, src)
        return x

    def all_gather_cat(self, x: Tensor, dim: int) -> Tensor:
        """Every rank's `x` (equal shapes), concatenated along `dim` in rank order."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    def all_gather_padded(self, x: Tensor, rows: int) -> Tensor:
        """`(world, rows, *x.shape[1:])`: every rank's `x` padded to `rows` leading rows."""
        out = x.new_empty((self.world, rows, *x.shape[1:]))
        padded = x if x.shape[0] == rows else torch.cat(
            [x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])
        dist.all_gather(list(out.unbind(0)), padded.contiguous())
        return out

    def gather_last(self, x: Tensor, sizes: tuple[int, ...]) -> Tensor:
        """Every rank's `x (..., sizes[rank])` joined along the last dim (uneven sizes)."""
        width = max(sizes)
        if x.shape[-1] < width:
            x = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)

    def agree_min(self, values: list[int]) -> list[int]:
        """The element-wise minimum of `values` over the ranks (host ints)."""
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return t.tolist()


def init_group(rank: int, world: int, device: torch.device, store: dist.Store) -> RankGroup:
    """Join the group through `store` (rank 0's TCPStore): NCCL on CUDA, gloo on the CPU."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT, **kwargs)
    cpu = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend == "nccl" else None
    return RankGroup(rank, world, device, cpu)


def leave_group() -> None:
    """Destroy this process's process groups (a no-op when none was made)."""
    if dist.is_initialized():
        dist.destroy_process_group()
