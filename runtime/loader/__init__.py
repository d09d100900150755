"""Weight loaders: a Hugging Face folder (config.json + safetensors) or a GGUF file.

Files:
- common.py: LoadedModel, meta build, per-tensor assignment, completeness checks, weights_id.
- hf.py: Hugging Face folders, one safetensors file or shards named by an index.
- experts.py: MoE expert tensors (per expert, stacked, gpt-oss MXFP4) into stacked parameters.
- mxfp4.py: MXFP4 (e2m1 + e8m0 block scales) dequantization.
- fp8_blocks.py: block-scaled fp8 weights (DeepSeek's `weight_scale_inv` / `scale`) dequantized.
- deepseek_names.py: DeepSeek-V4's own tensor names (`attn.wq_a`, `ffn.experts.E.w1`) -> ours.
- gguf_deepseek.py: llama.cpp's deepseek2 (MLA) GGUF names and metadata; kv_b halves joined.
- gguf.py: GGUF files: header parsing, dequantization (or 4-bit linears kept packed), llama.cpp
  names and q/k permutation undone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from runtime.errors import ModelNotFound
from runtime.loader.common import LoadedModel
from runtime.loader.gguf import load_gguf
from runtime.loader.hf import load_hf_folder


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    native: bool = False, split=None,
) -> LoadedModel:
    """Load the model at `path` (a HF folder or a .gguf file) with weights in `dtype` on `device`.

    Weights stream tensor by tensor into a model built on the meta device, so there is never a
    second full copy in memory. `native`: a GGUF's 4-bit linears stay packed on the CPU
    (loader/gguf.py); a folder ignores it. `split`: for a folder, a function of the config
    giving one tensor-parallel rank's TensorSplit (runtime/distributed/split.py), whose slice
    of each tensor is all that is read. Raises ModelNotFound, UnsupportedModel or
    CorruptModelFile, each with a one-line message naming the fix.
    """
    path = Path(path).expanduser()
    device = torch.device(device)
    if path.is_file():
        return load_gguf(path, dtype, device, native)
    if path.is_dir():
        if (path / "config.json").is_file():
            return load_hf_folder(path, dtype, device, split)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return load_gguf(ggufs[0], dtype, device, native)
        raise ModelNotFound(f"no config.json or single .gguf file in {path}; pass a model folder")
    raise ModelNotFound(
        f"model not found at {path}; run `agent models pull NAME` or pass a local path"
    )


__all__ = ["LoadedModel", "load_model"]
