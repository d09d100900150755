"""Restore from disk versus re-prefill, as a user meets it: two `agent generate` processes.

The first process computes an ~8K-token prompt (writing its KV pages through to disk); the OS
page cache is dropped; the second process, with the same prompt, restores the pages from disk.
A third run with --no-prefix-cache is the re-prefill baseline, measured side by side.

    python bench/restore_cpu.py --tokens 8000 --out bench/results/restore_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

AGENT = str(Path(sys.executable).parent / "agent")


def drop_page_cache() -> str:
    """Drop the OS page cache so the disk is really read; says how."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        return "not dropped (needs root)"


def generate(prompt: Path, env: dict, *flags: str) -> dict:
    out = subprocess.run([AGENT, "generate", "--raw", "-", "--json", "--max-tokens", "4", *flags],
                         stdin=prompt.open(), env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = random.Random(0)
    words = "the of and to in is that for it with as was on be by this are from at or".split()
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.txt"
        prompt.write_text(" ".join(rng.choice(words) for _ in range(args.tokens)))
        from runtime import settings

        # A private KV cache, sharing the model cache of this machine.
        cache = Path(tmp) / "cache"
        cache.mkdir()
        (cache / "models").symlink_to(settings.cache_dir() / "models")
        env = dict(os.environ, AGENT_CACHE_DIR=str(cache))
        first = generate(prompt, env)
        how = drop_page_cache()
        second = generate(prompt, env)
        baseline = generate(prompt, env, "--no-prefix-cache")
    result = {
        "prompt_tokens": first["usage"]["prompt_tokens"],
        "first_prefill_s": first["timings"]["prefill_s"],
        "restore_prefill_s": second["timings"]["prefill_s"],
        "restore_cached_tokens": second["usage"]["cached_tokens"],
        "restore_cached_by_tier": second["usage"]["cached_by_tier"],
        "reprefill_s": baseline["timings"]["prefill_s"],
        "page_cache": how,
        "same_output": first["tokens"] == second["tokens"] == baseline["tokens"],
    }
    result["speedup_vs_reprefill"] = round(result["reprefill_s"] / result["restore_prefill_s"], 1)
    for k, v in result.items():
        print(f"{k:24s} {v}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
