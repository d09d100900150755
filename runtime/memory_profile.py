"""What the memory plan measures: the device memory a prefill chunk and the graphs need, and
the size of a model's weights before they load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

from memory.device_pool import DevicePagePool
from memory.kv_layout import KVLayout
from runtime.engine.model_runner import ModelRunner, Work
from runtime.engine.sequence import BlockTable, Sequence
from runtime.rope import RotaryEmbedding

GRAPH_ROWS = 32  # the largest decode batch captured (cuda_graphs.DEFAULT_BUCKETS)
MIN_MARGIN = 1 << 30
_FOLLOW_UP = 37  # tokens of the warm-up's short queries: odd, so no size class is shared
MARGIN_FRACTION = 0.02  # of the card: allocator fragmentation, cuBLAS workspaces, NCCL later

_ITEMSIZE = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def profile_reserve(model: nn.Module, layout: KVLayout, chunk: int, backend,
                    device: torch.device, context: int) -> int:
    """Bytes to keep out of the KV pool on a CUDA device: the peak of one prefill chunk's
    forward (measured, which also compiles the prefill kernels), the decode graphs' pools
    (estimated) and a margin. The rope cache is grown to `context` first: it is the model's."""
    for m in model.modules():
        if isinstance(m, RotaryEmbedding):
            m.ensure(context, device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    pages = -(-(2 * chunk + _FOLLOW_UP) // layout.page_size)
    pool = DevicePagePool(layout, pages, device)
    torch.cuda.reset_peak_memory_stats(device)
    runner = ModelRunner(model, pool.layer_views(), backend, layout.page_size, device,
                         cuda_graphs=False)
    tokens = [i % 1000 for i in range(2 * chunk + _FOLLOW_UP)]
    seq = Sequence(table=BlockTable(device), tokens=tokens)
    seq.table.append(list(range(pages)))
    runner.run([Work(seq, 0, chunk, True)])
    torch.cuda.synchronize(device)
    pool_bytes = pool.data.numel() * pool.data.element_size()  # the pool is not activation
    peak = max(torch.cuda.max_memory_allocated(device) - base - pool_bytes, 0)
    compile_other_shapes(runner, seq, chunk)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        dtype = next(model.parameters()).dtype
        backend.compile_variants(cfg.num_heads, cfg.head_dim, dtype, device)
    del runner, pool, seq
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    return peak + graph_reserve(model) + max(MIN_MARGIN, int(total * MARGIN_FRACTION))


def compile_other_shapes(runner: ModelRunner, seq: Sequence, chunk: int) -> None:
    """Run the kernel variants a session meets besides a first chunk, so no turn waits for
    Triton to compile one (a first turn's last chunk waited 3.9 s on the H200): a chunk over a
    prefix, a short query over two chunks of keys (split keys: a next turn, a prompt's last
    chunk) and a short first chunk of odd length (a short prompt)."""
    runner.run([Work(seq, chunk, 2 * chunk, False)])
    runner.run([Work(seq, 2 * chunk, 2 * chunk + _FOLLOW_UP, True)])
    short = Sequence(table=seq.table, tokens=seq.tokens[:_FOLLOW_UP])
    runner.run([Work(short, 0, _FOLLOW_UP, True)])
    torch.cuda.synchronize()


def graph_reserve(model: nn.Module) -> int:
    """An upper estimate of the decode graphs' memory: per captured row the logits (fp32 and
    the model dtype), the hidden states and the MLP activations, and the decode partials."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return 256 << 20
    per_row = (cfg.vocab_size * 6 + (cfg.hidden_size * 8 + cfg.intermediate_size * 3) * 2
               + cfg.num_heads * 64 * cfg.head_dim * 4 * 2)
    return (64 << 20) + 2 * GRAPH_ROWS * per_row


def weights_bytes_on_disk(path: Path, dtype: torch.dtype) -> int:
    """The bytes a HF folder's safetensors weights take in `dtype` (headers read, nothing
    loaded); 0 when the format does not say (GGUF: the load itself reports running out)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    target = torch.empty((), dtype=dtype).element_size()
    total = 0
    for f in files:
        try:
            header = _safetensors_header(f)
        except (OSError, ValueError):
            return 0  # the loader reports the broken file itself
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            numel = 1
            for d in info.get("shape", []):
                numel *= int(d)
            size = _ITEMSIZE.get(info.get("dtype", ""), 2)
            total += numel * (target if size >= 2 else size)
    return total


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("short file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise ValueError("header too large")
        return json.loads(f.read(n))
