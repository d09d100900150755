"""The tiny random Llama the engine tests share (test_engine.CFG), built once per module."""

from __future__ import annotations

import pytest
import torch

from runtime.models import build_model
from tests.runtime.engine.test_engine import CFG


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)  # large enough that greedy paths differ between prompts
    return m.eval()
