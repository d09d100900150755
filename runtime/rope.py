"""Rotary embeddings: inverse frequencies (default, linear, llama3, yarn) and a cos/sin cache.

The inverse frequencies and yarn's attention factor follow transformers' `modeling_rope_utils`
operation for operation, so cos/sin are bit-identical to Hugging Face's on the same device.
"""

from __future__ import annotations

import math

import torch

from runtime.config import ModelConfig, RopeScaling
from runtime.errors import UnsupportedModel


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (base**exponents)  # (dim / 2,)


def _llama3_inv_freq(base: float, dim: int, s: RopeScaling, max_pos: int) -> torch.Tensor:
    inv_freq = _default_inv_freq(base, dim)
    old_context_len = s.original_max_position_embeddings or max_pos
    low_freq_wavelen = old_context_len / s.low_freq_factor
    high_freq_wavelen = old_context_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the middle band interpolated.
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old_context_len / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * inv_freq_llama / s.factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(s: RopeScaling) -> float:
    """The factor yarn multiplies cos/sin by (explicit, or derived from factor and mscale)."""
    if s.attention_factor is not None:
        return float(s.attention_factor)
    if s.mscale and s.mscale_all_dim:
        return float(_yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim))
    return _yarn_mscale(s.factor)


def _yarn_correction_range(
    s: RopeScaling, base: float, dim: int, max_pos: int
) -> tuple[float, float]:
    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(max_pos / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = correction_dim(s.beta_fast or 32)
    high = correction_dim(s.beta_slow or 1)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def _yarn_inv_freq(base: float, dim: int, s: RopeScaling, max_pos: int) -> torch.Tensor:
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (s.factor * pos_freqs)
    low, high = _yarn_correction_range(s, base, dim, s.original_max_position_embeddings or max_pos)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp(
        (torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1
    )
    extrapolation_factor = 1 - ramp
    return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor


def inv_freq_and_scale(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """fp32 CPU inverse frequencies `(head_dim / 2,)` and the factor applied to cos/sin."""
    s, base, dim = cfg.rope_scaling, cfg.rope_theta, cfg.head_dim
    if s.type == "default":
        return _default_inv_freq(base, dim), 1.0
    if s.type == "linear":
        return _default_inv_freq(base, dim) / s.factor, 1.0
    if s.type == "llama3":
        return _llama3_inv_freq(base, dim, s, cfg.max_position_embeddings), 1.0
    if s.type == "yarn":
        inv_freq = _yarn_inv_freq(base, dim, s, cfg.max_position_embeddings)
        return inv_freq, yarn_attention_factor(s)
    raise UnsupportedModel(
        f"unsupported rope scaling {s.type!r}; supported: default, linear, llama3, yarn"
    )


class RotaryEmbedding(torch.nn.Module):
    """cos/sin of `positions * inv_freq` from a fp32 cache that grows on demand.

    The cache holds half-width tables `(n, head_dim / 2)` (the two halves of HF's `cat(freqs,
    freqs)` are equal). It is a plain attribute, not a buffer: it never enters a state dict,
    survives a meta-device build, and is (re)built on the device of the positions it serves.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inv_freq, self.attention_scaling = inv_freq_and_scale(cfg)
        self.initial_len = min(cfg.max_position_embeddings, 4096)
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def set_freq_factors(self, factors: torch.Tensor) -> None:
        """Divide inv_freq by per-frequency factors (llama.cpp's `rope_freqs` tensor)."""
        assert factors.shape == self.inv_freq.shape, "one factor per rotary frequency"
        self.inv_freq = self.inv_freq / factors.to("cpu", torch.float32)
        self.cos = self.sin = None

    def ensure(self, n: int, device: torch.device) -> None:
        """Make the cache cover positions `0 .. n-1` on `device` (no-op when it already does)."""
        if self.cos is not None and self.cos.shape[0] >= n and self.cos.device == device:
            return
        length = max(n, self.initial_len)
        length = 1 << (length - 1).bit_length()  # round up to a power of two: few regrowths
        # Normal tensors even when first called under inference_mode, so autograd users work too.
        with torch.inference_mode(False), torch.no_grad():
            pos = torch.arange(length, device=device, dtype=torch.int64).float()
            freqs = pos[:, None] * self.inv_freq.to(device)[None, :]  # (length, D/2)
            self.cos = freqs.cos() * self.attention_scaling
            self.sin = freqs.sin() * self.attention_scaling

    def forward(self, positions: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `(T, head_dim / 2)` fp32 for positions `(T,)`, all below `max_len`."""
        self.ensure(max_len, positions.device)
        assert self.cos is not None and self.sin is not None
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x `(T, H, D)` by cos/sin `(T, D/2)` with HF's rotate_half convention, in x's dtype."""
    cos = cos.to(x.dtype)[:, None, :]  # (T, 1, D/2)
    sin = sin.to(x.dtype)[:, None, :]
    x1, x2 = x.chunk(2, dim=-1)  # (T, H, D/2) each
    # HF: x * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin), computed per half.
    return torch.cat((x1 * cos + (-x2) * sin, x2 * cos + x1 * sin), dim=-1)
