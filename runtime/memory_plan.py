"""The memory plan: KV pages per tier and the context a session may grow to, decided at start-up.

After the weights load, the device's free memory less what a prefill chunk, the CUDA graph pools
and a safety margin need is what the device KV pool may take, up to `gpu_memory` of the card
(the way vLLM sizes its pool from `gpu_memory_utilization`). The host tier takes `host_memory`
bytes (default: half the memory available at start-up; pinned lazily, in chunks), the disk tier
its byte budget. Attention reads device pages only, so a session's context is at most what the
device pool holds, the model's window and `max_context`, whichever is least.

`plan_memory` is pure arithmetic over the numbers the caller measured, so every branch (a window
that does not fit, a flag above the window, a model too big for the card) is tested on a CPU.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from runtime.errors import OutOfMemory

GIB = 1 << 30
# Pages beyond one session's context: the partial page a fork or a rewind copies, and the page
# that recomputing the last token copies on write.
SPARE_PAGES = 4


@dataclass(frozen=True)
class MemoryBudget:
    """What the user asks for (flags `--gpu-memory`, `--host-memory`, `--max-context`)."""

    gpu_memory: float = 0.90  # fraction of the card's memory this process may use in all
    host_memory: int | None = None  # bytes for the host tier; None: half the available RAM
    max_context: int | None = None  # tokens; None: the model's window

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory <= 1.0:
            raise ValueError(f"--gpu-memory must be a fraction in (0, 1], got {self.gpu_memory}")
        if self.max_context is not None and self.max_context < 1:
            raise ValueError(f"--max-context must be a positive token count, got "
                             f"{self.max_context}")
        if self.host_memory is not None and self.host_memory < 0:
            raise ValueError(f"--host-memory must not be negative, got {self.host_memory}")


@dataclass(frozen=True)
class DeviceMemory:
    """The device as measured after the weights loaded (bytes)."""

    kind: str  # "cuda" or "cpu"
    total: int
    free: int
    weights: int  # bytes of parameters and buffers the model holds on the device
    reserve: int  # prefill activations + graph pools + margin, kept out of the KV pool


@dataclass(frozen=True)
class MemoryPlan:
    """Pages per tier and the context a session may grow to; `notes` say why it is what it is."""

    device: str
    window: int  # the model's own context window
    max_context: int  # what a session may grow to under this plan
    page_size: int
    page_bytes: int
    kv_bytes_per_token: int
    weights_bytes: int
    reserved_bytes: int
    device_pages: int
    host_pages: int
    disk_bytes: int
    notes: tuple[str, ...] = ()

    @property
    def device_kv_bytes(self) -> int:
        return self.device_pages * self.page_bytes

    @property
    def host_kv_bytes(self) -> int:
        return self.host_pages * self.page_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["device_kv_bytes"] = self.device_kv_bytes
        out["host_kv_bytes"] = self.host_kv_bytes
        return out

    def lines(self) -> list[str]:
        """A human-readable summary, one fact a line (`agent models info`)."""
        per_tok = self.kv_bytes_per_token
        return [
            f"device       {self.device}",
            f"weights      {gb(self.weights_bytes)}",
            f"KV           {per_tok / 1024:.1f} KiB a token, pages of {self.page_size} tokens "
            f"({self.page_bytes / (1 << 20):.1f} MiB)",
            f"device tier  {self.device_pages:,} pages, {gb(self.device_kv_bytes)} "
            f"(reserved for activations and graphs: {gb(self.reserved_bytes)})",
            f"host tier    {self.host_pages:,} pages, {gb(self.host_kv_bytes)}",
            f"disk tier    up to {gb(self.disk_bytes)}",
            f"context      {self.max_context:,} tokens (model window {self.window:,})",
            *self.notes,
        ]


def plan_memory(window: int, page_size: int, page_bytes: int, dev: DeviceMemory,
                budget: MemoryBudget, host_available: int, disk_bytes: int,
                fp8_page_bytes: int | None = None) -> MemoryPlan:
    """The plan for a model of `window` tokens; raises OutOfMemory when not even the asked
    context (or one page) fits, with the numbers and the flag that changes them.
    `fp8_page_bytes`: a page's bytes with an fp8 KV cache, when the KV is not fp8 already
    (a window that does not fit then says what `--kv-dtype fp8` would hold)."""
    notes: list[str] = []
    wanted = window
    if budget.max_context is not None:
        if budget.max_context > window:
            notes.append(f"--max-context {budget.max_context:,} is above the model's window "
                         f"({window:,}); using {window:,}")
        wanted = min(window, budget.max_context)
    per_token = page_bytes // page_size
    if dev.kind == "cpu":
        # The "device" is host memory: one session's window, twice (rewinds, forks, reuse).
        device_pages = 2 * _pages(wanted, page_size) + SPARE_PAGES
        host_pages = max(device_pages // 4, 1)
        if budget.host_memory is not None:
            host_pages = max(budget.host_memory // page_bytes, 1)
        return MemoryPlan("cpu", window, wanted, page_size, page_bytes, per_token, dev.weights,
                          0, device_pages, host_pages, disk_bytes, tuple(notes))
    kv_budget = _device_kv_budget(dev, budget)
    device_pages = kv_budget // page_bytes
    fits = max(device_pages - SPARE_PAGES, 0) * page_size
    if fits < min(wanted, page_size):
        raise OutOfMemory(_too_small(dev, budget, kv_budget))
    context = min(wanted, fits)
    if context < wanted:
        fp8 = _fp8_offer(kv_budget, page_size, fp8_page_bytes, wanted)
        if budget.max_context is not None:
            raise OutOfMemory(
                f"--max-context {wanted:,} needs {gb(wanted * per_token)} of KV "
                f"({per_token / 1024:.0f} KiB a token) but {dev.kind} has {gb(kv_budget)} for KV "
                f"after the weights ({gb(dev.weights)}); use --max-context {fits:,} or less "
                f"or raise --gpu-memory{fp8}")
        notes.append(f"context {context:,} tokens, not the model's {window:,}: its KV would need "
                     f"{gb(wanted * per_token)} and the device holds {gb(kv_budget)} for KV "
                     f"(--max-context sets it; --gpu-memory gives KV more of the card{fp8})")
    host_bytes = budget.host_memory if budget.host_memory is not None else host_available // 2
    host_pages = max(host_bytes // page_bytes, 1)
    return MemoryPlan(dev.kind, window, context, page_size, page_bytes, per_token, dev.weights,
                      dev.reserve, device_pages, host_pages, disk_bytes, tuple(notes))


def _fp8_offer(kv_budget: int, page_size: int, fp8_page_bytes: int | None, wanted: int) -> str:
    """The clause offering an fp8 KV cache, naming the context it would hold ('' if none)."""
    if not fp8_page_bytes:
        return ""
    holds = min(wanted, max(kv_budget // fp8_page_bytes - SPARE_PAGES, 0) * page_size)
    if holds < page_size:
        return ""
    return f"; --kv-dtype fp8 holds {holds:,} tokens"


def _device_kv_budget(dev: DeviceMemory, budget: MemoryBudget) -> int:
    """What the KV pool may take: free memory less the reserve, within gpu_memory of the card
    (memory others hold counts against the fraction: it is of the card, not of what is free)."""
    used = dev.total - dev.free
    allowed = int(dev.total * budget.gpu_memory) - used - dev.reserve
    return max(min(dev.free - dev.reserve, allowed), 0)


def _too_small(dev: DeviceMemory, budget: MemoryBudget, kv_budget: int) -> str:
    cap = int(dev.total * budget.gpu_memory)
    return (f"the model does not fit the device: weights {gb(dev.weights)} plus "
            f"{gb(dev.reserve)} for activations leave {gb(kv_budget)} for KV within "
            f"--gpu-memory {budget.gpu_memory:g} ({gb(cap)} of {gb(dev.total)}, "
            f"{gb(dev.free)} free); use a smaller model or dtype, or raise --gpu-memory")


def _pages(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


def gb(n: int) -> str:
    """Bytes as GB with one decimal (GiB below 1 GB read as MB)."""
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.1f} GB"


def available_host_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; bytes."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * GIB


def parse_bytes(text: str) -> int:
    """'64G', '512M', '1.5T', '1000000' -> bytes (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = units.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in units else s
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size; use e.g. 64G or 512M") from None
    if value < 0:
        raise ValueError(f"a size must not be negative, got {text!r}")
    return int(value * mult)
