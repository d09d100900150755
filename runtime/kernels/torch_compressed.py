"""DeepSeek-V4's compressed attention in torch: the CPU path and the reference for kernels.

Four pieces, each operation for operation as transformers computes it:

- `rope_tail`: interleaved rotary on the trailing rope dims of each head, in fp32;
- `pool_windows`: one compressed entry per closed window, the softmax(gate + position bias)
  weighted sum of the window's compressor inputs (CSA: the previous window's first half and
  this window's second half, 2 x rate slots; HCA: the window's rate slots);
- `indexer_select`: the lightning indexer, `sum_h w_h relu(q_h . k_e)`, top k of the
  entries a query may see (those of windows closed at or before it);
- `sink_attention`: softmax attention of each query over its window keys and chosen entries,
  with a learned sink logit per head joining the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rope_tail(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the last `2 * cos.shape[-1]` dims of x `(T, ..., D)` by interleaved pairs
    `(x0, x1) -> (x0 c - x1 s, x1 c + x0 s)`; cos/sin `(T, rd / 2)`; fp32 math, x's dtype."""
    rd = 2 * cos.shape[-1]
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (rd,)
    c = cos.repeat_interleave(2, dim=-1).view(shape)
    s = sin.repeat_interleave(2, dim=-1).view(shape)
    nope, rope = x[..., :-rd], x[..., -rd:]
    turned = torch.stack((-rope[..., 1::2], rope[..., 0::2]), dim=-1).flatten(-2)
    rotated = (rope.float() * c + turned.float() * s).to(x.dtype)
    return torch.cat([nope, rotated], dim=-1)


def pool_windows(kv: Tensor, gate: Tensor, bias: Tensor, windows: Tensor, rate: int,
                 overlap: bool, origin: int = 0) -> Tensor:
    """Pre-norm entries of `windows` (n,) from per-token compressor inputs kv, gate `(S, C)`
    of tokens `origin ..` (every token the windows read) and the position bias `(rate, C)`;
    `(n, D)` with D = C / 2 (overlap) or C."""
    offsets = torch.arange(rate, device=kv.device)
    cur = windows[:, None] * rate + offsets - origin  # (n, rate) rows of the window's tokens
    g = gate[cur] + bias  # (n, rate, C) fp32, as HF adds the fp32 bias
    if not overlap:
        return (kv[cur] * g.softmax(dim=1, dtype=torch.float32).to(kv.dtype)).sum(dim=1)
    d = kv.shape[1] // 2
    first = (windows == 0)[:, None, None]  # window 0 has no previous window: weight zero
    prev = torch.where(first[..., 0], cur, cur - rate)
    kv_a = kv[prev][..., :d].masked_fill(first, 0.0)
    g_a = (gate[prev] + bias)[..., :d].masked_fill(first, float("-inf"))
    slots_kv = torch.cat([kv_a, kv[cur][..., d:]], dim=1)  # (n, 2 rate, D)
    slots_g = torch.cat([g_a, g[..., d:]], dim=1)
    return (slots_kv * slots_g.softmax(dim=1, dtype=torch.float32).to(kv.dtype)).sum(dim=1)


def visible_entries(positions: Tensor, rate: int, count: int) -> Tensor:
    """Bool `(n_q, count)`: entry e is visible to the query at position p iff its window
    closed at or before p (`e < (p + 1) // rate`)."""
    limit = (positions + 1) // rate
    return torch.arange(count, device=positions.device)[None, :] < limit[:, None]


def indexer_select(q: Tensor, weights: Tensor, keys: Tensor, visible: Tensor, top_k: int,
                   scale: float) -> Tensor:
    """The entries each query attends, bool `(n_q, n_e)`: the top `top_k` visible ones by
    `sum_h weights[q, h] * relu(q[q, h] . keys[e]) * scale` (q `(n_q, Hi, Di)`, fp32)."""
    scores = F.relu(torch.einsum("qhd,ed->qhe", q.float(), keys.float())) * scale
    index = (scores * weights.float()[..., None]).sum(dim=1)  # (n_q, n_e)
    index = index.masked_fill(~visible, float("-inf"))
    k = min(top_k, keys.shape[0])
    chosen = index.topk(k, dim=-1).indices  # (n_q, k)
    picked = torch.zeros_like(visible).scatter_(1, chosen, True)
    return picked & visible


def sink_attention(q: Tensor, keys: Tensor, allowed: Tensor, sinks: Tensor,
                   scale: float) -> Tensor:
    """q `(n_q, H, D)` over shared keys = values `(n_k, D)` where `allowed` `(n_q, n_k)`;
    each head's sink logit joins the softmax as a column of value zero."""
    scores = torch.einsum("qhd,kd->hqk", q, keys.to(q.dtype)) * scale  # (H, n_q, n_k)
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    sink = sinks.to(scores.dtype).view(-1, 1, 1).expand(-1, q.shape[0], 1)
    scores = torch.cat([scores, sink], dim=-1)
    scores = scores - scores.max(dim=-1, keepdim=True).values
    probs = torch.softmax(scores, dim=-1)[..., :-1].to(keys.dtype)
    return torch.einsum("hqk,kd->qhd", probs, keys).to(q.dtype)  # (n_q, H, D)
