"""Multi-head latent attention kernels on one GPU at DeepSeek-V3's width, against bounds.

128 heads, a 512-wide latent plus a 64-wide rope key per token (576 bf16 values, 1,152 bytes a
token and layer), qk_nope 128, v 128, 256-token pages in random order:

- decode: batch 1 over {8K, 128K, 1M} cached latents: the Triton backend's absorbed step (the
  query absorption and output projection included) and the kernel alone, against the bytes of
  the latents read over the measured copy bandwidth; the torch reference at 8K;
- extend: 2K new queries over 128K cached latents (absorbed, FLOPs of the causal work over the
  measured bf16 matmul rate).

    python bench/deepseek_mla.py --out bench/results/deepseek_mla.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.engine.metadata import build_metadata  # noqa: E402
from runtime.kernels.torch_mla import TorchLatentBackend  # noqa: E402
from runtime.kernels.triton_mla import TritonLatentBackend, latent_attention, query_tokens  # noqa: E402,E501

H, R, DR, DN, DV, PAGE = 128, 512, 64, 128, 128, 256


def ms(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=200, return_mode="median"))


def setup(context: int, q_len: int):
    pages = -(-context // PAGE)
    cache = torch.randn(pages + 1, PAGE, 1, R + DR, device="cuda", dtype=torch.bfloat16)
    order = torch.randperm(pages + 1).tolist()[:pages]
    meta = build_metadata([order], [context], [q_len], PAGE, torch.device("cuda"))
    q_nope = torch.randn(q_len, H, DN, device="cuda", dtype=torch.bfloat16)
    q_rope = torch.randn(q_len, H, DR, device="cuda", dtype=torch.bfloat16)
    w_kv = torch.randn(H, DN + DV, R, device="cuda", dtype=torch.bfloat16) * 0.05
    return cache, meta, q_nope, q_rope, w_kv


def ceilings() -> tuple[float, float]:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * x.numel() / (ms(lambda: y.copy_(x)) / 1e3), 2 * 8192**3 / (ms(lambda: a @ a) / 1e3)


def decode_row(context: int, bw: float, triton_b, torch_b) -> dict:
    """One decode step over `context` latents: the backend's step, the kernel, the bound."""
    cache, meta, qn, qr, w = setup(context, 1)
    seq, pos = query_tokens(meta)
    q_lat = torch.einsum("thd,hdr->thr", qn, w[:, :DN]).contiguous()
    row = {"context": context,
           "step_ms": ms(lambda: triton_b.decode(qn, qr, cache, w, meta, 0.07)),
           "kernel_ms": ms(lambda: latent_attention(q_lat, qr, cache, meta.block_tables, seq,
                                                    pos, 0.07)),
           "bound_ms": context * (R + DR) * 2 / bw * 1e3}
    if context <= 8192:
        row["torch_ms"] = ms(lambda: torch_b.decode(qn, qr, cache, w, meta, 0.07))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    bw, flops = ceilings()
    res: dict = {"copy_bw": bw, "bf16_flops": flops, "decode": [], "extend": []}
    triton_b, torch_b = TritonLatentBackend(), TorchLatentBackend()
    for context in ([8192, 65536] if args.quick else [8192, 131072, 1 << 20]):
        res["decode"].append(decode_row(context, bw, triton_b, torch_b))
    context, q_len = (16384, 512) if args.quick else (131072, 2048)
    cache, meta, qn, qr, w = setup(context, q_len)
    work = 2 * q_len * (context - q_len / 2) * H * (2 * R + DR)  # scores + latent sum, causal
    t = ms(lambda: triton_b.extend(qn, qr, cache, w, meta, 0.07))
    res["extend"].append({"context": context, "queries": q_len, "ms": t,
                          "tflops": work / (t / 1e3) / 1e12,
                          "bound_ms": work / flops * 1e3})
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
