"""On the GPU at Qwen2.5-7B shape (random bf16 weights) with a 128K-token parent context: a
sub-agent's first token comes within a few hundred milliseconds of its task call, far sooner
than a new session re-prefilling the context. Runs bench/subagent_start.py in a process of
its own. Set AGENT_TEST_MODEL_DIR to keep the 15 GB model folder between runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_a_subagent_starts_in_milliseconds_at_128k(tmp_path):
    out = tmp_path / "subagent_start.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "subagent_start.py"),
                           "--context", "131072", "--work", str(tmp_path / "work"),
                           "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["shared_tokens"] >= 128_000
    assert row["subagent_s"] < 0.5, row
    assert row["reprefill"]["s"] > 10 * row["subagent_s"], row
    assert row["reprefill"]["computed"] >= 128_000  # it really prefilled the context again
