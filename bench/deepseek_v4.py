"""DeepSeek-V4 at real width on one GPU: prefill and decode per layer, KV bytes per 1M tokens.

DeepSeek-V4-Flash's widths (hidden 4096, 64 heads of 512, q_lora 1024, 8 output groups of
1024, a 64-head 128-wide lightning indexer keeping 512 entries, a 128-token window, CSA at
stride 4, HCA at stride 128, 4 hyper-connection streams) with a reduced layer count (one CSA
and one HCA layer by default) and a reduced expert count (8 routed experts of 2048, top 6,
instead of 256: the experts' weights alone would be 13 GB per layer). Random bf16 weights:
only timings and bytes are meaningful.

- prefill: `--prefill` tokens in `--chunk`-token chunks from an empty cache, per layer;
- 1M: rows of a 1M-token prefix filled with random values, then one chunk's prefill timed
  at offsets 0, 1/4, 1/2, 3/4 and 1 of the context, integrated (trapezoid) over the chunks of
  a whole 1M prefill; decode steps at 128K and 1M;
- bounds: decode by bytes (the layer's weights read once, the window and chosen rows, the
  indexer keys) over the measured copy bandwidth; prefill by FLOPs over the measured matmul;
- transformers: the same two layers through transformers' eager DeepSeek-V4 at `--hf-len`
  tokens (prefill and one decode step), when the installed transformers has it.

    python bench/deepseek_v4.py --out bench/results/deepseek_v4.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.device_pool import DevicePagePool  # noqa: E402
from memory.kv_layout import KVLayout  # noqa: E402
from runtime.config import ModelConfig  # noqa: E402
from runtime.engine.metadata import build_metadata  # noqa: E402
from runtime.forward_context import ForwardContext  # noqa: E402
from runtime.kernels.backend import create_backend  # noqa: E402
from runtime.kernels.layer_ops import layer_ops  # noqa: E402
from runtime.models import build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deepseek_mla import ceilings  # noqa: E402  (the measured copy and matmul ceilings)

PAGE = 256
FLASH = {"vocab_size": 129280, "hidden_size": 4096, "moe_intermediate_size": 2048,
         "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512,
         "q_lora_rank": 1024, "num_experts_per_tok": 6, "n_routed_experts": 8,
         "n_shared_experts": 1, "scoring_func": "sqrtsoftplus", "routed_scaling_factor": 1.5,
         "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
         "compress_rope_theta": 160000.0, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
         "swiglu_limit": 10.0, "sliding_window": 128, "o_groups": 8, "o_lora_rank": 1024,
         "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512, "rms_norm_eps": 1e-6,
         "partial_rotary_factor": 0.125, "rope_theta": 10000.0,
         "max_position_embeddings": 1 << 20,
         "architectures": ["DeepseekV4ForCausalLM"]}  # fmt: skip


def config(layers: int) -> dict:
    kinds = ["compressed_sparse_attention", "heavily_compressed_attention"] * layers
    return {**FLASH, "num_hidden_layers": layers, "layer_types": kinds[:layers],
            "mlp_layer_types": ["moe"] * layers}


def random_model(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                p.copy_(torch.randint_like(p, cfg.num_experts))
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
            if model.keeps_fp32(name) and p.is_floating_point():
                p.data = p.data.float()
    return model


class Bench:
    """One sequence over a device pool of `max_tokens` tokens; forwards timed on the GPU."""

    def __init__(self, model, cfg: ModelConfig, max_tokens: int):
        planes, heads, dim = cfg.kv_row()
        self.layout = KVLayout(cfg.num_layers, heads, dim, PAGE, torch.bfloat16, planes)
        self.pool = DevicePagePool(self.layout, -(-max_tokens // PAGE) + 1, "cuda")
        self.pages = list(range(self.pool.num_pages))
        self.model, self.cfg = model, cfg
        self.backend, self.ops = create_backend("triton"), layer_ops("cuda")

    @torch.inference_mode()
    def forward(self, start: int, n: int) -> float:
        """Seconds of one forward of tokens `start .. start + n` (synchronised)."""
        end = start + n
        meta = build_metadata([self.pages[: -(-end // PAGE)]], [end], [n], PAGE,
                              torch.device("cuda"))
        ids = torch.randint(0, self.cfg.vocab_size, (n,), device="cuda")
        ctx = ForwardContext(self.backend, self.pool.layer_views(), meta, self.ops)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.model(ids, torch.arange(start, end, device="cuda"), ctx)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def decode(self, at: int, steps: int) -> float:
        self.forward(at, 1)  # warm
        return sorted(self.forward(at, 1) for _ in range(steps))[steps // 2]


def bounds(cfg: ModelConfig, model, context: int, bw: float, flops: float) -> dict:
    """Per-layer lower bounds: a decode step's bytes over bw, a prefill's FLOPs over flops."""
    v4, layers = cfg.v4, cfg.num_layers
    per_layer = sum(p.numel() * p.element_size() for p in model.model.layers.parameters())
    per_layer /= layers
    experts = 3 * cfg.hidden_size * cfg.moe_intermediate_size * 2  # one expert's bytes
    active = per_layer - experts * (cfg.num_experts - cfg.num_experts_per_tok)
    # window keys and chosen entries (head_dim bf16 each), every indexer key (Di bf16 each)
    kv = ((v4.sliding_window + v4.index_topk) * cfg.head_dim * 2
          + context // v4.csa_rate * v4.index_head_dim * 2)
    dense_flops = 2 * active / 2  # FLOPs per token of the matmuls (bytes / 2 = params)
    attn = 4 * (v4.sliding_window + v4.index_topk) * cfg.num_heads * cfg.head_dim
    index = context / 4 / 2 * v4.index_n_heads * v4.index_head_dim * 2  # causal average
    return {"decode_s": (active + kv) / bw,
            "prefill_s": context * (dense_flops + attn + index) / flops}


def hf_timings(layers: int, n: int) -> dict | None:
    """transformers' eager DeepSeek-V4, the same widths and layers: prefill of n, one step."""
    try:
        import transformers
        cls = transformers.DeepseekV4Config
    except (ImportError, AttributeError):
        return None
    raw = {k: v for k, v in config(layers).items() if k not in ("architectures",)}
    hf_cfg = cls(**raw, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device("cuda"):
        hf = transformers.AutoModelForCausalLM.from_config(
            hf_cfg, attn_implementation="eager", experts_implementation="eager",
            dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (1, n), device="cuda")
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf(ids, use_cache=True)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        cache = getattr(out, "cache", None) or out.past_key_values
        t0 = time.perf_counter()
        hf(ids[:, :1], past_key_values=cache, use_cache=True)
        torch.cuda.synchronize()
        decode = time.perf_counter() - t0
    del hf
    torch.cuda.empty_cache()
    return {"tokens": n, "prefill_s_per_layer": prefill / layers,
            "decode_s_per_layer": decode / layers}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--long", type=int, default=1 << 20)
    ap.add_argument("--long-chunk", type=int, default=2048)
    ap.add_argument("--hf-len", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="small lengths, to check it runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.prefill, args.chunk, args.long, args.long_chunk = 4096, 1024, 16384, 512
        args.hf_len = 512
    cfg = ModelConfig.from_hf(config(args.layers))
    model = random_model(cfg)
    bw, flops = ceilings()
    bench = Bench(model, cfg, args.long + args.long_chunk)
    layers = cfg.num_layers
    res: dict = {"layers": [cfg.v4.layer_kinds[i] for i in range(layers)],
                 "routed_experts": cfg.num_experts, "copy_bw": bw, "bf16_flops": flops}
    res["kv_bytes_per_token_per_layer"] = bench.layout.bytes_per_token // layers
    per_layer = bench.layout.bytes_per_token // layers
    res["kv_bytes_per_1M_tokens_flash_43_layers"] = per_layer * 43 << 20
    res["kv_bytes_allocated_per_token"] = (bench.pool.data.numel() * 2
                                           // (bench.pool.num_pages * PAGE))
    chunks = [bench.forward(s, min(args.chunk, args.prefill - s))
              for s in range(0, args.prefill, args.chunk)]
    res["prefill"] = {"tokens": args.prefill, "chunk": args.chunk,
                      "s_per_layer": sum(chunks) / layers,
                      "bound_s_per_layer": bounds(cfg, model, args.prefill, bw, flops)["prefill_s"]}
    res["decode_at_prefill"] = {"context": args.prefill,
                                "s_per_layer": bench.decode(args.prefill, 10) / layers,
                                "bound_s_per_layer": bounds(cfg, model, args.prefill, bw,
                                                            flops)["decode_s"]}
    bench.pool.data.normal_()  # a long prefix's rows, random: only the timings matter
    offsets = [max(0, int(f * args.long) - args.long_chunk) for f in (0, .25, .5, .75, 1)]
    at = [bench.forward(o, args.long_chunk) / layers for o in offsets]
    per_chunk = sum((a + b) / 2 for a, b in zip(at, at[1:])) / (len(at) - 1)
    res["prefill_long"] = {"tokens": args.long, "chunk": args.long_chunk,
                           "chunk_s_per_layer_at": dict(zip(offsets, at)),
                           "estimated_s_per_layer": per_chunk * args.long / args.long_chunk,
                           "bound_s_per_layer": bounds(cfg, model, args.long, bw,
                                                       flops)["prefill_s"]}
    res["decode_long"] = {"context": args.long,
                          "s_per_layer": bench.decode(args.long - 1, 10) / layers,
                          "bound_s_per_layer": bounds(cfg, model, args.long, bw, flops)["decode_s"]}
    del bench
    torch.cuda.empty_cache()
    short = Bench(model, cfg, args.hf_len + 1)
    res["ours_at_hf_len"] = {"tokens": args.hf_len,
                             "prefill_s_per_layer": short.forward(0, args.hf_len) / layers,
                             "decode_s_per_layer": short.decode(args.hf_len, 5) / layers}
    del short, model
    torch.cuda.empty_cache()
    res["transformers"] = hf_timings(args.layers, args.hf_len)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
