"""Shared fixtures: the embedded default model, and skipping GPU tests off the GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One core per worker (CI runs `-n 2` on 2 cores): OpenMP threads of two workers waiting
    # on each other's cores run torch 4-100x slower. Subprocesses (`agent`) inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of the embedded default model's GGUF, pulled into the model cache on first use."""
    from runtime.model_cache import ensure_default_model

    return ensure_default_model(progress=False)
