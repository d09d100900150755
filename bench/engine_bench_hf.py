"""The transformers baseline of bench/gpu_engine.py, sharing our weight tensors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_bench_core import (  # noqa: E402
    Bench,
    K,
    drop_engine,
    make_engine,
    rand_ids,
)

from runtime.config import ModelConfig  # noqa: E402


def part_hf(b: Bench, out: dict, model, cfg: ModelConfig) -> None:
    """transformers on our very tensors (no copy): parity, 128K prefill, decode at 128K."""
    hf = hf_model(model, cfg, b.dev)
    out["transformers"] = __import__("transformers").__version__
    out["parity_rel_err_1k"] = hf_parity(b, hf, model, cfg)
    print(f"  parity at 1K: rel err {out['parity_rel_err_1k']:.2e}", flush=True)
    chunk = b.args.hf_chunk
    for n in (b.args.long // 4, b.args.long):
        ids = torch.tensor([rand_ids(n, cfg.vocab_size, seed=n)], device=b.dev)
        took, cache = b.timed(lambda ids=ids: hf_prefill(hf, ids, chunk))
        out[f"prefill_{n // K}k_s"] = took
        print(f"  HF prefill {n // K}K ({chunk // K}K chunks): {took:.2f} s", flush=True)
        if took > b.args.hf_max_s:  # 128K would take ~16x this: keep the device time
            b.res["notes"].append(f"transformers stopped after {n} tokens ({took:.1f} s)")
            return
    out["decode_128k_ms"] = hf_decode_ms(b, hf, cache, ids, n=b.args.hf_decode_tokens)
    print(f"  HF decode at {n // K}K: {out['decode_128k_ms']:.1f} ms/token", flush=True)


def hf_model(model, cfg: ModelConfig, dev: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    hc = Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                     intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                     max_position_embeddings=cfg.max_position_embeddings,
                     rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                     tie_word_embeddings=False, use_sliding_window=False,
                     attn_implementation="sdpa")  # fmt: skip
    with torch.device("meta"):
        hf = Qwen2ForCausalLM(hc)
    hf.load_state_dict(model.state_dict(), assign=True, strict=True)  # shares the tensors
    hf.model.rotary_emb = Qwen2RotaryEmbedding(config=hc).to(dev)  # its buffers were on meta
    return hf.eval()


def _cache_kwarg(hf) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _new_cache(hf):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=hf.config)
    except TypeError:
        return DynamicCache()


@torch.inference_mode()
def hf_prefill(hf, ids: torch.Tensor, chunk: int):
    cache, kw = _new_cache(hf), _cache_kwarg(hf)
    for i in range(0, ids.shape[1], chunk):
        hf(input_ids=ids[:, i : i + chunk], use_cache=True, logits_to_keep=1, **{kw: cache})
    return cache


@torch.inference_mode()
def hf_decode_ms(b: Bench, hf, cache, ids: torch.Tensor, n: int) -> float:
    kw = _cache_kwarg(hf)
    tok = ids[:, -1:]
    steps = []
    for i in range(n + 2):
        start = time.perf_counter()
        logits = hf(input_ids=tok, use_cache=True, logits_to_keep=1, **{kw: cache}).logits
        tok = logits[:, -1].argmax(-1, keepdim=True)
        tok.item()  # the host needs the token, as generate does
        if i >= 2:
            steps.append(time.perf_counter() - start)
    return float(np.median(steps)) * 1e3


@torch.inference_mode()
def hf_parity(b: Bench, hf, model, cfg: ModelConfig) -> float:
    ids = rand_ids(K, cfg.vocab_size, seed=1)
    ref = hf(input_ids=torch.tensor([ids], device=b.dev), logits_to_keep=1).logits[0, -1].float()
    engine = make_engine(b, model, cfg, -(-K // b.args.page) + 2, host_pages=1, chunk=512)
    seq = engine.new_sequence()
    engine.extend(seq, ids)
    got = seq.last_logits
    err = ((got - ref).norm() / ref.norm()).item()
    drop_engine(b, engine)
    return err
