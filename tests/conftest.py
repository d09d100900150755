"""Shared fixtures: the embedded default model, and skipping GPU tests off the GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


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
