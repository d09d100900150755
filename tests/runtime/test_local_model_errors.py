"""Which failures of a CUDA start-up read as "out of device memory" (one OutOfMemory line)."""

from __future__ import annotations

import torch

from runtime.local_model import _is_device_oom


def test_cublas_and_torch_allocation_failures_are_device_oom():
    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                          "`cublasCreate(handle)`")
    assert _is_device_oom(cublas)
    assert _is_device_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert _is_device_oom(RuntimeError("CUDA error: out of memory"))


def test_other_runtime_errors_are_not():
    assert not _is_device_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not _is_device_oom(RuntimeError("shape mismatch"))
