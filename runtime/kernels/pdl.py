"""Programmatic dependent launch (Hopper and later): the next kernel launches during this one.

A batch-1 decode step is ~300 kernels of a few microseconds each; between two of them the GPU
idles for the launch of the second. With PDL the second kernel's blocks are scheduled while the
first one's last wave runs and wait at `griddepcontrol.wait` until it has finished and its
writes are visible. Every kernel launched with `launch_pdl` therefore starts with `wait()` (so
nothing is read early) followed by `release()` (so the kernel after it may launch early).
Kernels between them that know nothing of PDL (torch's, cuBLAS's) simply serialise as usual.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


def pdl_enabled(device: torch.device, requested: bool = True) -> bool:
    """True when `requested` (the ops object's `pdl` option: A/B runs turn it off) on CUDA
    devices of compute capability 9.0 and later (never in the interpreter)."""
    return requested and device.type == "cuda" and _hopper_or_later(device)


@functools.lru_cache(maxsize=8)
def _hopper_or_later(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


@triton.jit
def wait_and_release(PDL: tl.constexpr):
    """At a kernel's start: wait for the kernel before, then let the one after launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
