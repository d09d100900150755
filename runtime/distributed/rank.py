"""RankContext: what LocalModel.open does differently on one rank of a tensor-parallel group."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.config import ModelConfig
from runtime.distributed.group import RankGroup
from runtime.distributed.link import Link
from runtime.distributed.mirror import DrivingEngine, Mirror
from runtime.distributed.rank_engine import RankEngine
from runtime.distributed.split import TensorSplit, check_splittable
from runtime.errors import OutOfMemory
from runtime.loader import load_model
from runtime.loader.common import LoadedModel
from runtime.memory_plan import MemoryPlan, gb
from runtime.memory_profile import weights_bytes_on_disk


@dataclass
class RankContext:
    """Rank `group.rank` of `group.world`: its device, its shard of the weights, its share
    of the memory plan, its KV fingerprint, and its engine (driving on rank 0)."""

    group: RankGroup
    link: Link
    cp_min: int  # context-parallel prefill from this many fresh tokens (0: never)
    mirror: Mirror | None = None  # rank 0's

    @property
    def device(self) -> torch.device:
        return self.group.device

    def split(self, cfg: ModelConfig) -> TensorSplit:
        """This rank's TensorSplit of `cfg`; InvalidParallel (one line) if it cannot split."""
        check_splittable(cfg, self.group.world)
        return TensorSplit(self.group.rank, self.group.world, cfg)

    def load(self, path: Path, dtype: torch.dtype) -> LoadedModel:
        """Only this rank's slice of each safetensors tensor is read; a GGUF file is loaded
        whole on the host, then cut. OutOfMemory (one line) when the shard cannot fit."""
        if self.device.type == "cuda":
            need = weights_bytes_on_disk(path, dtype) // self.group.world
            free, total = torch.cuda.mem_get_info(self.device)
            if need > free:
                raise OutOfMemory(f"rank {self.group.rank}'s share of the weights needs "
                                  f"{gb(need)} but {self.device} has {gb(free)} free of "
                                  f"{gb(total)}; raise --tensor-parallel or free the GPU")
        if path.is_dir() and (path / "config.json").is_file():
            loaded = load_model(path, dtype, self.device, split=self.split)
            split = self.split(loaded.config)
        else:
            loaded = load_model(path, dtype, "cpu")
            split = self.split(loaded.config)
            split.narrow(loaded.model)
            loaded.model.to(self.device)
        split.finish(loaded.model)
        return loaded

    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """The config of this rank's attention (its KV heads: its page layout)."""
        return self.split(cfg).local_config()

    def weights_key(self, weights_id: str) -> str:
        """The weights id in this rank's KV fingerprint: its pages (and page files, under
        their own fingerprint directory) are its own share."""
        return f"{weights_id}#tp{self.group.world}.rank{self.group.rank}"

    def agree_plan(self, plan: MemoryPlan, exact_host: bool) -> MemoryPlan:
        """Every rank takes the smallest rank's pools (an allocation must succeed or fail on
        every rank alike);
        the host tier's budget, planned per process, is shared by the ranks of this host."""
        host = plan.host_pages if exact_host else max(1, plan.host_pages // self.group.world)
        device, host, context = self.group.agree_min([plan.device_pages, host,
                                                      plan.max_context])
        return dataclasses.replace(plan, device_pages=device, host_pages=host,
                                   max_context=context)

    def engine_factory(self) -> Any:
        """The Engine class LocalModel.open builds, bound to this rank."""
        if self.mirror is not None:
            return functools.partial(DrivingEngine, group=self.group, cp_min=self.cp_min,
                                     mirror=self.mirror)
        return functools.partial(RankEngine, group=self.group, cp_min=self.cp_min)
