"""`agent generate --tensor-parallel 2` through the installed command, on a tiny HF folder:
the one-process tokens, and a second process restoring every rank's pages from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runtime.engine.sampling import SamplingParams
from runtime.local_model import LocalModel, RuntimeOptions

AGENT = str(Path(sys.executable).parent / "agent")
PROMPT = "def main():\n    return"


def generate(folder: Path, cache: Path, *extra: str) -> dict:
    env = dict(os.environ, AGENT_SERVER="off", AGENT_DATA_DIR=str(cache / "data"))
    done = subprocess.run([AGENT, "generate", "--model", str(folder), "--device", "cpu",
                           "--dtype", "fp32", "--raw", PROMPT, "--json", "--max-tokens", "8",
                           "--cache-dir", str(cache), *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_process_tokens(folder: Path, cache: Path) -> list[int]:
    model = LocalModel.open(str(folder), RuntimeOptions(dtype="fp32", device="cpu",
                                                        warmup=False, cache_dir=cache))
    try:
        seq = model.engine.new_sequence()
        model.engine.extend(seq, model.tokenizer.encode(PROMPT))
        params = SamplingParams(max_tokens=8)
        return [e.token_id for e in model.engine.generate(seq, params)]
    finally:
        model.close()


def test_generate_split_over_two_ranks_gives_the_same_tokens_and_restores(qwen2_folder,
                                                                          tmp_path):
    want = one_process_tokens(qwen2_folder, tmp_path / "one")
    first = generate(qwen2_folder, tmp_path / "two", "--tensor-parallel", "2")
    assert first["tokens"] == want and len(want) == 8
    again = generate(qwen2_folder, tmp_path / "two", "--tensor-parallel", "2")
    assert again["tokens"] == want
    usage = again["usage"]
    assert usage["cached_tokens"] == usage["prompt_tokens"]  # every rank's tail, from disk
