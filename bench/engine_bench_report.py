"""The table and the plot of bench/gpu_engine.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_bench_core import (  # noqa: E402
    GOALS,
)

# -- report ---------------------------------------------------------------------------------------


def summary(res: dict) -> list[tuple[str, float, float, float, float, bool | None, str]]:
    """Rows (what, measured, bound, baseline, goal, met, baseline's name); NaN where absent."""
    g = lambda *keys: _get(res, *keys)  # noqa: E731
    nan = math.nan
    rows = [
        ("prefill 128K (s)", g("prefill", "measured_s"), g("prefill", "bound_s"),
         g("hf", "prefill_128k_s"), GOALS["prefill_128k_s"], "lower", "transformers"),
        ("follow-up 2K on 1M, TTFT (s)", g("long", "follow_up_ttft_s"),
         g("long", "follow_up_bound_s"), nan, GOALS["follow_up_ttft_s"], "lower", ""),
        ("decode b1 1K (tok/s)", g("decode", "b1_1k", "graph_tok_s"),
         g("decode", "b1_1k", "bound_tok_s"), g("decode", "b1_1k", "eager_tok_s"),
         GOALS["decode_1k_tok_s"], "higher", "eager"),
        ("decode b1 128K (tok/s)", g("decode", "b1_128k", "graph_tok_s"),
         g("decode", "b1_128k", "bound_tok_s"), 1e3 / g("hf", "decode_128k_ms"),
         GOALS["decode_128k_tok_s"], "higher", "transformers"),
        ("decode b1 1M (tok/s)", g("long", "b1_1m", "graph_tok_s"),
         g("long", "b1_1m", "bound_tok_s"), g("long", "b1_1m", "eager_tok_s"),
         GOALS["decode_1m_tok_s"], "higher", "eager"),
        ("restore 128K from host (s)", g("restore", "host", "acquire_s"),
         g("restore", "host", "copy_bound_s"), g("restore", "prefill_disk_off_s"),
         g("restore", "host", "copy_bound_s") / GOALS["restore_fraction_of_copy"], "lower",
         "re-prefill"),
        ("restore 128K from disk (s)", g("restore", "disk", "extend_s"),
         g("restore", "disk", "sequential_read_s"), g("restore", "prefill_disk_off_s"),
         g("restore", "disk", "sequential_read_s") / GOALS["restore_fraction_of_copy"], "lower",
         "re-prefill"),
        ("prefill 128K, disk tier on (s)", g("restore", "prefill_disk_on_s"),
         g("restore", "prefill_disk_off_s"), nan,
         g("restore", "prefill_disk_off_s") * (1 + GOALS["write_through_slowdown"]), "lower",
         ""),
        ("extend attn 2K over 1M (TFLOP/s)", g("kernels", "extend_1m", "triton", "TFLOPs"),
         g("ceilings", "matmul_TFLOPs"), g("kernels", "extend_1m", "sdpa_flash_causal", "TFLOPs"),
         GOALS["extend_1m_tflops"], "higher", "SDPA flash"),
        ("decode attn over 1M (TB/s)", g("kernels", "decode_1m", "triton_graph", "TBps"),
         g("ceilings", "copy_TBps"), g("kernels", "decode_1m", "sdpa_flash_nomask", "TBps"),
         GOALS["decode_attention_1m_tbps"], "higher", "SDPA flash"),
    ]  # fmt: skip
    out = []
    for what, measured, bound, base, goal, better, base_name in rows:
        met = None
        if not (math.isnan(measured) or math.isnan(goal)):
            met = measured <= goal if better == "lower" else measured >= goal
        out.append((what, measured, bound, base, goal, met, base_name))
    return out


def _get(res: dict, *keys: str) -> float:
    cur = res
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return math.nan
        cur = cur[k]
    return float(cur) if isinstance(cur, (int, float)) else math.nan


def print_table(res: dict) -> None:
    head = f"{'what':32s} {'measured':>9s} {'bound':>9s} {'baseline':>9s} {'goal':>9s}  met"
    print("\n" + head)
    for what, m, bd, base, goal, met, name in summary(res):
        ok = "-" if met is None else ("yes" if met else "NO")
        print(f"{what:32s} {m:9.3f} {bd:9.3f} {base:9.3f} {goal:9.3f}  {ok:3s}  {name}")
    print("(bound of the disk-tier-on row: the same prefill with the tier off)")
    if res["errors"]:
        print("errors:", json.dumps(res["errors"], indent=1))


def plot(res: dict, path: str) -> None:
    """Bars for each goal's row, then time versus context length for decode and follow-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary(res)
    fig = plt.figure(figsize=(18, 16))
    grid = fig.add_gridspec(4, 4)
    for i, (what, m, bd, base, goal, met, base_name) in enumerate(rows[:12]):
        ax = fig.add_subplot(grid[i // 4, i % 4])
        names, vals = ["measured", "bound", base_name or "baseline", "goal"], [m, bd, base, goal]
        colors = ["tab:green" if met else "tab:red", "tab:gray", "tab:blue", "tab:orange"]
        ax.bar(names, [0 if math.isnan(v) else v for v in vals], color=colors)
        for j, v in enumerate(vals):
            if not math.isnan(v):
                ax.text(j, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(what, fontsize=10)
    _plot_versus_context(res, fig.add_subplot(grid[3, :2]), fig.add_subplot(grid[3, 2:]))
    fig.suptitle(f"engine on {res.get('machine', {}).get('gpu', '?')}, Qwen2.5-7B shape, bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_versus_context(res: dict, decode_ax, turn_ax) -> None:
    """Decode ms per token and follow-up / prefill seconds against tokens in context."""
    points = [_get(res, "decode", "b1_1k", "context"), _get(res, "decode", "b1_128k", "context"),
              _get(res, "long", "b1_1m", "context")]  # fmt: skip
    keys = [("decode", "b1_1k"), ("decode", "b1_128k"), ("long", "b1_1m")]
    for field, label, style in (("graph_tok_s", "ours (CUDA graphs)", "o-"),
                                ("bound_tok_s", "bound (HBM)", "k--"),
                                ("eager_tok_s", "ours, eager", "x:")):  # fmt: skip
        ms = [1e3 / _get(res, *k, field) for k in keys]
        decode_ax.plot(points, ms, style, label=label)
    hf_ms = _get(res, "hf", "decode_128k_ms")
    if not math.isnan(hf_ms):
        decode_ax.plot([points[1]], [hf_ms], "s", color="tab:blue", label="transformers")
    decode_ax.set(xscale="log", yscale="log", xlabel="tokens in context",
                  ylabel="ms per token (batch 1)", title="decode time versus context length")
    decode_ax.legend(fontsize=8)
    follow = [(_get(res, "decode", "b1_128k", "context"),
               min(res.get("decode", {}).get("follow_up_2k_on_128k_runs_s") or [math.nan])),
              (_get(res, "long", "resident_tokens"), _get(res, "long", "follow_up_ttft_s"))]
    turn_ax.plot([c for c, _ in follow], [t for _, t in follow], "o-",
                 label="2K-token follow-up, first token (ours)")  # fmt: skip
    prefill = [(n * 1024, _get(res, "hf", f"prefill_{n}k_s")) for n in (32, 128)]
    turn_ax.plot([n for n, _ in prefill], [t for _, t in prefill], "s--", color="tab:blue",
                 label="prefill, transformers")  # fmt: skip
    turn_ax.plot([_get(res, "config", "long")], [_get(res, "prefill", "measured_s")], "o",
                 color="tab:green", label="prefill, ours")  # fmt: skip
    turn_ax.set(xscale="log", yscale="log", xlabel="tokens in context", ylabel="seconds",
                title="turn time versus context length")
    turn_ax.legend(fontsize=8)
