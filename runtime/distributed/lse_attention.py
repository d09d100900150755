"""Attention over one block of keys that also returns its log-sum-exp, and the merge of blocks.

Context-parallel prefill attends each query chunk to the keys before it and, causally, to its
own; each part's output comes with `lse = log(sum(exp(scores)))` per query and head, and
`merge` combines them exactly: the softmax over all the keys, never materialised at once.
CUDA: FlexAttention (GQA without copies, `lse` from the kernel); elsewhere the torch math
below, in fp32, over query blocks so the scores stay small.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

_QUERY_BLOCK = 1024  # queries per block of the reference's scores


def attention_lse(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool
                  ) -> tuple[Tensor, Tensor]:
    """q `(n, Hq, D)`, k/v `(m, Hkv, D)` -> out `(n, Hq, D)` in q's dtype, lse `(n, Hq)` fp32.
    `causal`: n == m, query i sees keys 0..i (the block is the queries' own)."""
    assert not causal or q.shape[0] == k.shape[0], "a causal block is the queries' own keys"
    if q.is_cuda:
        return _flex(q, k, v, scale, causal)
    return _reference(q, k, v, scale, causal)


def merge(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Two blocks' outputs and lse for the same queries -> those of both blocks' keys."""
    lse = torch.logaddexp(lse1, lse2)  # (n, H)
    w1, w2 = (lse1 - lse).exp().unsqueeze(-1), (lse2 - lse).exp().unsqueeze(-1)
    out = o1.float() * w1 + o2.float() * w2
    return out.to(o1.dtype), lse


def _reference(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool
               ) -> tuple[Tensor, Tensor]:
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # (Hq, m, D)
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    outs, lses = [], []
    for s in range(0, q.shape[0], _QUERY_BLOCK):
        qb = q[s : s + _QUERY_BLOCK].float().transpose(0, 1)  # (Hq, b, D)
        scores = qb @ kf.transpose(1, 2) * scale  # (Hq, b, m)
        if causal:
            rows = torch.arange(s, s + qb.shape[1]).unsqueeze(1)
            scores = scores.masked_fill(torch.arange(k.shape[0]) > rows, -math.inf)
        lse = scores.logsumexp(-1)  # (Hq, b)
        outs.append(((scores - lse.unsqueeze(-1)).exp() @ vf).transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs).to(q.dtype), torch.cat(lses)


def _flex(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask

    mask = None
    if causal:
        mask = create_block_mask(_causal, None, None, q.shape[0], k.shape[0], device=q.device)
    out, aux = _compiled_flex()(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0), block_mask=mask, scale=scale, enable_gqa=True,
        return_aux=AuxRequest(lse=True))  # (1, Hq, n, D), lse (1, Hq, n)
    return out[0].transpose(0, 1), aux.lse[0].transpose(0, 1).float()


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)
