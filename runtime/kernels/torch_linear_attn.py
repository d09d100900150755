"""Torch reference for the linear-attention layers: the short causal convolution and the gated
delta rule (Gated DeltaNet), as a chunked scan for prefill and a recurrent step for decode.

Both follow transformers' torch fallbacks (`torch_chunk_gated_delta_rule`,
`torch_recurrent_gated_delta_rule`, `causal_conv1d_*`) operation for operation, but work on one
sequence's flattened tokens `(L, H, D)` and carry their state explicitly, so a prefill may stop
at any token and resume from the state it left (chunk boundaries change only rounding).
The recurrent state is fp32 `(H, Dk, Dv)`; the convolution state holds the last `K - 1` inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 64  # the scan's chunk, as transformers and FLA use


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / ||x|| over the last dim, as FLA (and transformers) compute it."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def causal_conv(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv + SiLU over one sequence's new inputs.

    x `(L, C)`, state `(C, K-1)` the inputs before them, weight `(C, K)` ->
    out `(L, C)` in x's dtype, new state `(C, K-1)`."""
    k = weight.shape[-1]
    full = torch.cat([state.to(weight.dtype), x.t().to(weight.dtype)], dim=-1)  # (C, K-1+L)
    out = F.conv1d(full[None], weight[:, None, :], bias, groups=weight.shape[0])[0]  # (C, L)
    return F.silu(out).t().to(x.dtype), full[:, full.shape[-1] - (k - 1):].to(state.dtype)


def causal_conv_step(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """One new input per sequence: x `(B, C)`, state `(B, C, K-1)` -> out `(B, C)`, state."""
    full = torch.cat([state.to(weight.dtype), x[:, :, None].to(weight.dtype)], dim=-1)  # (B,C,K)
    out = (full * weight[None]).sum(dim=-1)
    if bias is not None:
        out = out + bias
    return F.silu(out).to(x.dtype), full[:, :, 1:].to(state.dtype)


def _prepare(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor):
    """fp32 copies; q, k L2-normalised (q also scaled by 1/sqrt(Dk)); k heads repeated to v's."""
    rep = v.shape[-2] // k.shape[-2]
    if rep > 1:  # each q/k head serves `rep` consecutive value heads
        q, k = q.repeat_interleave(rep, dim=-2), k.repeat_interleave(rep, dim=-2)
    q, k = l2norm(q.float()), l2norm(k.float())
    return q * q.shape[-1] ** -0.5, k, v.float(), g.float(), beta.float()


def gated_delta_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                     state: Tensor) -> tuple[Tensor, Tensor]:
    """One token per sequence. q, k `(B, Hk, Dk)`, v `(B, Hv, Dv)`, g (log decay) and beta
    `(B, Hv)`, state `(B, Hv, Dk, Dv)` fp32 -> out `(B, Hv, Dv)` in v's dtype, new state."""
    dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    s = state * g.exp()[..., None, None]
    kv_mem = (s * k[..., None]).sum(dim=-2)  # (B, Hv, Dv): what the state predicts for k
    delta = (v - kv_mem) * beta[..., None]
    s = s + k[..., None] * delta[..., None, :]
    return (s * q[..., None]).sum(dim=-2).to(dtype), s


def gated_delta_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                        state: Tensor, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """One sequence's L tokens. q, k `(L, Hk, Dk)`, v `(L, Hv, Dv)`, g and beta `(L, Hv)`,
    state `(Hv, Dk, Dv)` fp32 -> out `(L, Hv, Dv)` in v's dtype, the state after the last token.

    Within a chunk the delta-rule updates are condensed by the UT transform (a unit lower
    triangular solve); chunks are scanned in order."""
    dtype, length = v.dtype, v.shape[0]
    q, k, v, g, beta = (x.transpose(0, 1) for x in _prepare(q, k, v, g, beta))  # (H, L, ...)
    pad = (-length) % chunk
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))  # padded tokens: no decay, no write
    h, n = v.shape[0], (length + pad) // chunk
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    q, k, k_beta, v_beta = (x.reshape(h, n, chunk, -1) for x in (q, k, k_beta, v_beta))
    g = g.reshape(h, n, chunk).cumsum(dim=-1)  # (H, N, C): log decay since the chunk start
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=v.device).triu(1)
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(upper, float("-inf")).exp()
    ut = (k_beta @ k.transpose(-1, -2)) * decay  # (H, N, C, C)
    intra = (q @ k.transpose(-1, -2)) * decay
    new_v = torch.linalg.solve_triangular(ut, v_beta, upper=False, unitriangular=True)
    k_cum = torch.linalg.solve_triangular(ut, k_beta * g.exp()[..., None], upper=False,
                                          unitriangular=True)
    q = q * g.exp()[..., None]
    k = k * (g[..., -1:] - g).exp()[..., None]
    chunk_decay = g[..., -1].exp()[..., None, None]  # (H, N, 1, 1)
    out = torch.empty_like(new_v)
    s = state
    for i in range(n):
        v_i = new_v[:, i] - k_cum[:, i] @ s  # (H, C, Dv): the correction the state lacks
        out[:, i] = q[:, i] @ s + intra[:, i] @ v_i
        s = s * chunk_decay[:, i] + k[:, i].transpose(-1, -2) @ v_i
    out = out.reshape(h, n * chunk, -1)[:, :length].transpose(0, 1)  # (L, H, Dv)
    return out.to(dtype), s
