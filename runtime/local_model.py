"""A model ready to serve: weights, tokenizer, chat template and an engine over KV pages."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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
from runtime.kernels.backend import create_backend, default_backend_name
from runtime.loader import load_model
from runtime.model_cache import resolve_model
from runtime.tokenizer import Tokenizer

# Bump whenever the engine changes what it writes into a KV page.
KV_LAYOUT_VERSION = 1

_TEMPLATE_DATE = datetime(2026, 1, 1)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to serve a model; None means the device's default."""

    dtype: str | None = None  # fp32 | bf16 | fp16
    device: str | None = None  # cpu | cuda | cuda:N
    page_size: int | None = None
    kv_pages: int | None = None  # device pages; default: the context window, twice
    backend: str | None = None
    prefill_chunk: int | None = None
    progress: bool = False
    prefix_cache: bool = True  # reuse KV across sequences, sessions and processes (disk tier)
    host_pages: int | None = None  # default: a quarter of the device pages on CPU, all on GPU
    disk_max_bytes: int | None = None  # default: default_disk_budget(); LRU gc beyond it


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
    load_s: float
    fingerprint: str = ""  # hex of the KV fingerprint: weights, dtypes, rope, page layout

    def flush(self) -> None:
        """Make every sealed KV page durable (the end of a turn or of a command)."""
        self.engine.kv.flush()

    def close(self) -> None:
        """Flush, record this process's cache hits, stop the KV background threads."""
        self.flush()
        stats = getattr(self.engine.kv, "stats", None)
        if stats:
            record_usage(settings.cache_dir(), stats())
        close = getattr(self.engine.kv, "close", None)
        if close:
            close()

    @property
    def context_window(self) -> int:
        return self.config.max_position_embeddings

    @classmethod
    def open(cls, spec: str | None, options: RuntimeOptions = RuntimeOptions(),
             kv: KVPages | None = None) -> LocalModel:
        """Resolve (pulling if needed), load and wrap in an engine. Raises runtime errors."""
        start = time.perf_counter()
        spec = spec or settings.default_model()
        path = resolve_model(spec, progress=options.progress)
        device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = DTYPES[options.dtype or _default_dtype(device)]
        loaded = load_model(path, dtype=dtype, device=device)
        loaded.model.fuse_projections()
        if device.type == "cpu":
            use_onednn(loaded.model)
        tokenizer = _load_tokenizer(path)
        cfg = loaded.config
        layout = kv_layout_for(cfg, dtype, options.page_size or default_page_size(device))
        fingerprint = model_fingerprint(loaded.weights_id, dtype, layout, _rope_string(cfg),
                                        KV_LAYOUT_VERSION)
        kv = kv or _kv_pages(cfg, layout, fingerprint, device, options)
        backend = create_backend(options.backend or default_backend_name(device))
        stop_ids = frozenset(loaded.generation_eos_ids) | frozenset(tokenizer.eos_ids)
        engine = Engine(loaded.model, kv, backend, max_context=cfg.max_position_embeddings,
                        stop_ids=stop_ids, tokenizer=tokenizer, device=device,
                        config=EngineConfig(prefill_chunk=options.prefill_chunk or
                                            (512 if device.type == "cpu" else 8192)))
        template = _template(tokenizer)
        return cls(spec, path, cfg, tokenizer, template, engine, loaded.weights_id, dtype,
                   time.perf_counter() - start, fingerprint.hex())


def _default_dtype(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def default_page_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def kv_layout_for(cfg: ModelConfig, dtype: torch.dtype, page_size: int) -> KVLayout:
    return KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size, dtype)


def _kv_pages(cfg: ModelConfig, layout: KVLayout, fingerprint: bytes, device: torch.device,
              options: RuntimeOptions) -> KVPages:
    """Tiered pages with a disk tier under the cache dir, or private pages without reuse."""
    pages = options.kv_pages or 2 * -(-cfg.max_position_embeddings // layout.page_size)
    if not options.prefix_cache:
        return PrivatePages(DevicePagePool(layout, pages, device))
    host = options.host_pages or (pages if device.type == "cuda" else max(pages // 4, 1))
    cache = settings.cache_dir()
    return TieredKVCache(layout, pages, host, fingerprint, disk_dir=cache,
                         disk_max_bytes=options.disk_max_bytes or default_disk_budget(cache),
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
