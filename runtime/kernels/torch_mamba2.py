"""Torch reference for the Mamba-2 selective state-space scan (SSD): chunked for prefill, a
recurrent step for decode.

Follows transformers' torch fallbacks (`mamba2_chunk_scan`, `mamba2_selective_state_update`)
operation for operation, for one sequence's flattened tokens with an explicit fp32 state
`(H, P, N)` (heads, head dim, state size), so a prefill may stop at any token and resume.
`dt` comes in raw: the bias and softplus are applied here, and the chunked scan also clamps
it from below, as transformers does (its decode step does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_sum(x: Tensor) -> Tensor:
    """`out[..., i, j] = sum(x[..., j+1 : i+1])` for j <= i, -inf above the diagonal."""
    t = x.shape[-1]
    x = x[..., None].expand(*x.shape, t)
    x = x.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device), -1), 0)
    out = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
    return out.masked_fill(~keep, float("-inf"))


def _pad_chunks(x: Tensor, pad: int, chunk: int) -> Tensor:
    """`(L, ...)` -> `(L / chunk, chunk, ...)` after zero-padding L by `pad`."""
    x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x
    return x.reshape(-1, chunk, *x.shape[1:])


def ssd_chunked(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor,
                dt_bias: Tensor, dt_min: float, state: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]:
    """x `(L, H, P)`, dt `(L, H)`, a = -exp(A_log) `(H,)`, b, c `(L, G, N)`, d `(H,)`,
    state `(H, P, N)` fp32 -> y `(L, H, P)` fp32, the state after the last token."""
    length, h = x.shape[:2]
    dt = torch.clamp(F.softplus(dt + dt_bias.to(dt.dtype)), min=dt_min)
    x = x.float()
    b = b.float().repeat_interleave(h // b.shape[1], dim=1)  # (L, H, N)
    c = c.float().repeat_interleave(h // c.shape[1], dim=1)
    d_residual = d[:, None] * x
    x = x * dt[..., None].float()
    adt = a.to(x.dtype) * dt.float()  # (L, H)
    pad = (-length) % chunk
    x, adt, b, c = (_pad_chunks(t, pad, chunk) for t in (x, adt, b, c))  # (C, l, ...)
    adt = adt.permute(2, 0, 1)  # (H, C, l)
    cum = torch.cumsum(adt, dim=-1)
    # Within chunks: attention-like scores of C against B, decayed between positions.
    scores = torch.einsum("clhn,cshn->clsh", c, b) * torch.exp(segment_sum(adt)).permute(1, 2, 3, 0)
    y_diag = torch.einsum("clsh,cshp->clhp", scores, x)
    # Each chunk's contribution to the state at its end, then the scan over chunks.
    b_decay = b * torch.exp(cum[..., -1:] - cum).permute(1, 2, 0)[..., None]
    states = torch.einsum("clhn,clhp->chpn", b_decay, x)
    states = torch.cat([state[None].to(states.dtype), states])  # (C + 1, H, P, N)
    decay_chunk = torch.exp(segment_sum(F.pad(cum[..., -1], (1, 0)))).permute(2, 1, 0)  # (z,c,H)
    new_states = torch.einsum("zch,zhpn->chpn", decay_chunk, states)
    starts, final = new_states[:-1], new_states[-1]
    y_off = torch.einsum("clhn,chpn->clhp", c, starts) * torch.exp(cum).permute(1, 2, 0)[..., None]
    y = (y_diag + y_off).reshape(-1, h, x.shape[-1])[:length]
    return y + d_residual, final


def ssd_step(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor,
             dt_bias: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token per sequence: x `(B, H, P)`, dt `(B, H)`, b, c `(B, G, N)`, state
    `(B, H, P, N)` fp32 -> y `(B, H, P)` in x's dtype, new state."""
    h = x.shape[1]
    dt = F.softplus(dt + dt_bias.to(dt.dtype))[..., None, None]  # (B, H, 1, 1)
    decay = torch.exp(dt.float() * a.float()[None, :, None, None])
    b = b.repeat_interleave(h // b.shape[1], dim=1)[:, :, None, :]  # (B, H, 1, N)
    c = c.repeat_interleave(h // c.shape[1], dim=1)
    s = state * decay + dt * b * x[..., None]
    y = (s.to(c.dtype) @ c[..., None])[..., 0]  # (B, H, P)
    return (y + x * d[None, :, None]).to(x.dtype), s
