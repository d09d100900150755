"""A model ready to serve: weights, tokenizer, chat template and an engine over KV pages."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memory.cache_usage import record_usage
from memory.device_pool import DevicePagePool
from memory.hashing import model_fingerprint
from memory.kv_cache import TieredKVCache
from memory.kv_layout import KVLayout
from runtime import settings
from runtime.chat_template import ChatTemplate
from runtime.config import ModelConfig
from runtime.engine.cpu_layout import use_onednn
from runtime.engine.engine import Engine, EngineConfig
from runtime.engine.kv_pages import KVPages, PrivatePages
from runtime.errors import OutOfMemory
from runtime.kernels.backend import create_backend, default_backend_name
from runtime.loader import load_model
from runtime.memory_plan import (
    DeviceMemory,
    MemoryBudget,
    MemoryPlan,
    available_host_memory,
    gb,
    plan_memory,
)
from runtime.memory_profile import profile_reserve, weights_bytes_on_disk
from runtime.model_cache import resolve_model
from runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    from runtime.distributed.rank import RankContext

log = logging.getLogger(__name__)

# Bump whenever the engine changes what it writes into a KV page.
KV_LAYOUT_VERSION = 1

_TEMPLATE_DATE = datetime(2026, 1, 1)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KV_DTYPES = {**DTYPES, "fp8": torch.float8_e4m3fn}  # fp8: e4m3, a scale per token and head


@dataclass(frozen=True)
class RuntimeOptions:
    """How to serve a model; None means the device's default."""

    dtype: str | None = None  # fp32 | bf16 | fp16
    weights: str | None = None  # native (a GGUF's 4-bit linears packed, CPU) | fp32 | bf16
    kv_dtype: str | None = None  # fp32 | bf16 | fp16 | fp8; default: the weights' dtype
    device: str | None = None  # cpu | cuda | cuda:N
    page_size: int | None = None
    backend: str | None = None
    prefill_chunk: int | None = None
    progress: bool = False
    prefix_cache: bool = True  # reuse KV across sequences, sessions and processes (disk tier)
    gpu_memory: float = 0.90  # fraction of the card this process may use (weights included)
    host_memory: int | None = None  # bytes for the host tier; default: half the available RAM
    max_context: int | None = None  # tokens a session may grow to; default: the model's window
    disk_max_bytes: int | None = None  # default: default_disk_budget(); LRU gc beyond it
    kv_pages: int | None = None  # exact device pages, bypassing the plan (tests, benchmarks)
    host_pages: int | None = None  # exact host pages, likewise
    warmup: bool | None = None  # capture the batch-1 decode graph at start (default: on CUDA)
    cache_dir: Path | None = None  # models and KV pages; None: the settings' (env, config file)
    constraints: bool = False  # build the grammar tokenizer while the weights load (sessions)
    tensor_parallel: int = 1  # ranks (one process per GPU) the model is split over
    context_parallel: int | None = None  # fresh prefills from this many tokens split across
    # the ranks by tokens (None: runtime/distributed's CP_MIN_TOKENS; 0: never)


@dataclass
class LocalModel:
    """A loaded model and its engine. `name` is the spec the user gave."""

    name: str
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    template: ChatTemplate | None
    engine: Engine
    weights_id: str
    dtype: torch.dtype
    load_s: float  # resolving and loading the weights
    fingerprint: str = ""  # hex of the KV fingerprint: weights, dtypes, rope, page layout
    plan: MemoryPlan | None = None
    warmup_s: float = 0.0  # profiling the prefill, compiling kernels, capturing graphs
    cache_dir: Path | None = None  # where its KV usage is recorded (None: the settings')

    def flush(self) -> None:
        """Make every sealed KV page durable (the end of a turn or of a command)."""
        self.engine.kv.flush()

    def close(self) -> None:
        """Flush, record this process's cache hits, stop the KV background threads."""
        self.flush()
        stats = getattr(self.engine.kv, "stats", None)
        if stats:
            record_usage(self.cache_dir or settings.cache_dir(), stats())
        close = getattr(self.engine.kv, "close", None)
        if close:
            close()

    @property
    def context_window(self) -> int:
        """What a session may grow to: the model's window as the memory plan allows it."""
        return self.engine.max_context

    @classmethod
    def open(cls, spec: str | None, options: RuntimeOptions = RuntimeOptions(),
             kv: KVPages | None = None, rank: RankContext | None = None) -> LocalModel:
        """Resolve (pulling if needed), load, plan memory and wrap in an engine. Raises
        runtime errors (OutOfMemory when the model or the asked context does not fit).
        `tensor_parallel > 1`: rank 0 of a group it starts (runtime/distributed/); `rank`:
        how one rank of such a group opens its share."""
        if options.tensor_parallel > 1 and rank is None:
            from runtime.distributed.launch import open_parallel

            return open_parallel(cls, spec, options, kv)
        start = time.perf_counter()
        budget = MemoryBudget(options.gpu_memory, options.host_memory, options.max_context)
        spec = spec or settings.default_model()
        path = resolve_model(spec, progress=options.progress, cache_dir=options.cache_dir)
        device = rank.device if rank else torch.device(
            options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Tensor-parallel ranks gather dense weights (rank.load): packed ones are single-process.
        weights = options.weights or settings.default_weights(device.type)
        native = weights == "native" and rank is None
        dequantized = None if native else options.weights
        dtype = DTYPES[options.dtype or dequantized or settings.default_dtype(device.type)]
        settings.export_triton_cache_dir(options.cache_dir)
        tokenizer = _load_tokenizer(path)
        if options.constraints and (rank is None or rank.group.rank == 0):
            from runtime.constraints import prepare  # llguidance: only sessions need it

            prepare(tokenizer)  # beside the load: the first turn needs it
        loaded = rank.load(path, dtype) if rank else _load(path, dtype, device, native)
        loaded.model.fuse_projections()
        if device.type == "cpu" and rank is None:  # the ranks gather their raw weights
            use_onednn(loaded.model)
        load_s = time.perf_counter() - start
        cfg = loaded.config
        kv_dtype = KV_DTYPES[options.kv_dtype] if options.kv_dtype else dtype
        layout = kv_layout_for(rank.local_config(cfg) if rank else cfg, kv_dtype,
                               options.page_size or default_page_size(device))
        weights_key = rank.weights_key(loaded.weights_id) if rank else loaded.weights_id
        fingerprint = model_fingerprint(weights_key, dtype, layout, _rope_string(cfg),
                                        KV_LAYOUT_VERSION)
        backend = create_backend(options.backend or default_backend_name(device))
        chunk = options.prefill_chunk or (512 if device.type == "cpu" else 8192)
        plan = _plan(loaded.model, cfg, layout, device, backend, chunk, budget, options)
        if rank:
            plan = rank.agree_plan(plan, exact_host=options.host_pages is not None)
        kv = kv or _kv_pages(plan, layout, fingerprint, device, options)
        stop_ids = frozenset(loaded.generation_eos_ids) | frozenset(tokenizer.eos_ids)
        engine_cls = rank.engine_factory() if rank else Engine
        engine = engine_cls(loaded.model, kv, backend, max_context=plan.max_context,
                            stop_ids=stop_ids, tokenizer=tokenizer, device=device,
                            config=EngineConfig(prefill_chunk=chunk,
                                                max_batch_tokens=max(chunk, 2048)))
        if options.warmup if options.warmup is not None else device.type == "cuda":
            engine.warm_up()
        template = _template(tokenizer)
        warmup_s = time.perf_counter() - start - load_s
        return cls(spec, path, cfg, tokenizer, template, engine, loaded.weights_id, dtype,
                   load_s, fingerprint.hex(), plan, warmup_s, cache_dir=options.cache_dir)


def _load(path: Path, dtype: torch.dtype, device: torch.device, native: bool = False):
    """load_model, with a model too large for the device as one line, checked before loading
    where the files tell the size (safetensors) and caught during the load otherwise."""
    if device.type == "cuda":
        need = weights_bytes_on_disk(path, dtype)
        free, total = torch.cuda.mem_get_info(device)
        if need > free:
            raise OutOfMemory(f"the model's weights need {gb(need)} in {_dtype_name(dtype)} but "
                              f"{device} has {gb(free)} free of {gb(total)}"
                              f"{_held_by_others(device)}; use a smaller model or a GPU with "
                              "more memory")
    try:
        return load_model(path, dtype=dtype, device=device, native=native)
    except torch.OutOfMemoryError as e:
        raise OutOfMemory(f"the model's weights do not fit {device} in {_dtype_name(dtype)} "
                          f"({str(e).splitlines()[0]}){_held_by_others(device)}; use a smaller "
                          "model") from e


def _held_by_others(device: torch.device) -> str:
    """A clause naming the device memory other processes hold, when that is over 1 GiB (a
    resident server holds most of the GPU while it runs), else ""."""
    free, total = torch.cuda.mem_get_info(device)
    others = total - free - torch.cuda.memory_reserved(device)
    if others < 1 << 30:
        return ""
    return (f"; other processes hold {gb(others)} of it (a resident server `agent serve` "
            "holds the GPU while it runs: share it with --server auto, or stop it with "
            "`agent serve --stop`)")


def _is_device_oom(e: BaseException) -> bool:
    """An allocation failure on the device: torch's own, or a library's (cuBLAS creates its
    handle and workspace at the first matmul and reports ALLOC_FAILED when none is left)."""
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "ALLOC_FAILED" in text or (
        "out of memory" in text and "CUDA" in text)


def _plan(model, cfg: ModelConfig, layout: KVLayout, device: torch.device, backend,
          chunk: int, budget: MemoryBudget, options: RuntimeOptions) -> MemoryPlan:
    """Measure the device after the weights and decide the pages per tier (memory_plan.py)."""
    window = cfg.max_position_embeddings
    disk = options.disk_max_bytes or default_disk_budget(options.cache_dir or settings.cache_dir())
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if device.type == "cuda":
        context = min(window, budget.max_context or window)
        try:
            reserve = profile_reserve(model, layout, chunk, backend, device, context)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not _is_device_oom(e):
                raise
            raise OutOfMemory(f"{device} ran out of memory running one {chunk:,}-token prefill "
                              f"chunk after the weights{_held_by_others(device)}") from e
        free, total = torch.cuda.mem_get_info(device)
        dev = DeviceMemory("cuda", total, free, weights, reserve)
    else:
        dev = DeviceMemory("cpu", 0, 0, weights, 0)
    fp8 = None if layout.scaled else kv_layout_for(cfg, KV_DTYPES["fp8"], layout.page_size)
    plan = plan_memory(window, layout.page_size, layout.page_bytes, dev, budget,
                       available_host_memory(), disk, fp8.page_bytes if fp8 else None)
    if options.kv_pages or options.host_pages:
        plan = dataclasses.replace(plan, device_pages=options.kv_pages or plan.device_pages,
                                   host_pages=options.host_pages or plan.host_pages)
    for note in plan.notes:
        log.warning("%s", note)
    return plan


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


WEIGHTS = ("native", "fp32", "bf16")


def default_page_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def kv_layout_for(cfg: ModelConfig, dtype: torch.dtype, page_size: int) -> KVLayout:
    planes, heads, dim = cfg.kv_row()  # K/V planes, or one plane of latent / compressed rows
    return KVLayout(cfg.num_layers, heads, dim, page_size, dtype, planes)


def _kv_pages(plan: MemoryPlan, layout: KVLayout, fingerprint: bytes, device: torch.device,
              options: RuntimeOptions) -> KVPages:
    """Tiered pages with a disk tier under the cache dir, or private pages without reuse."""
    if not options.prefix_cache:
        return PrivatePages(DevicePagePool(layout, plan.device_pages, device))
    return TieredKVCache(layout, plan.device_pages, plan.host_pages, fingerprint,
                         disk_dir=options.cache_dir or settings.cache_dir(),
                         disk_max_bytes=plan.disk_bytes,
                         device=device)


def default_disk_budget(cache: Path) -> int:
    """At most 50 GiB of KV pages, and never more than half the disk's free space."""
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return min(50 << 30, shutil.disk_usage(probe).free // 2)


def _rope_string(cfg: ModelConfig) -> str:
    """The rope settings as a canonical string, for the KV fingerprint."""
    return f"theta={cfg.rope_theta};{cfg.rope_scaling}"


def _load_tokenizer(path: Path) -> Tokenizer:
    if path.is_file():
        return Tokenizer.from_gguf(path)
    return Tokenizer.from_hf_folder(path)


def _template(tokenizer: Tokenizer) -> ChatTemplate | None:
    if not tokenizer.chat_template:
        return None
    # A fixed "now" keeps templates that print the date from changing the cached prefix.
    return ChatTemplate(tokenizer.chat_template, bos_token=tokenizer.bos_token or "",
                        eos_token=tokenizer.eos_token or "", now=_TEMPLATE_DATE)
