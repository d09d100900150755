"""Sliding windows and attention sinks in the torch reference; other backends refuse them."""

from __future__ import annotations

import pytest
import torch

from runtime.errors import UnsupportedModel
from runtime.kernels.torch_ref import attend_reference
from runtime.kernels.triton_backend import TritonBackend


def naive(q, k, v, scale, window, sinks):
    """Per query and head: scores over the visible keys, one sink logit, softmax, drop it."""
    tq, hq, d = q.shape
    tk, group = k.shape[0], hq // k.shape[1]
    out = torch.zeros_like(q)
    for i in range(tq):
        pos = tk - tq + i
        lo = 0 if window is None else max(0, pos - window + 1)
        for h in range(hq):
            keys, vals = k[lo : pos + 1, h // group], v[lo : pos + 1, h // group]
            s = keys @ q[i, h] * scale
            if sinks is not None:
                s = torch.cat([s, sinks[h : h + 1]])
            p = torch.softmax(s, 0)[: keys.shape[0]]
            out[i, h] = p @ vals
    return out


@pytest.mark.parametrize("q_len, kv_len", [(1, 30), (5, 30), (30, 30)])
@pytest.mark.parametrize("window", [None, 1, 8, 64])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_window_and_sinks_match_a_naive_loop(q_len, kv_len, window, with_sinks):
    g = torch.Generator().manual_seed(q_len + kv_len)
    q = torch.randn(q_len, 4, 8, generator=g)
    k, v = torch.randn(kv_len, 2, 8, generator=g), torch.randn(kv_len, 2, 8, generator=g)
    sinks = torch.randn(4, generator=g) * 2 if with_sinks else None
    if window is None and sinks is None:
        pytest.skip("the plain path is covered by the backend tests")
    got = attend_reference(q, k, v, 0.35, window, sinks)
    torch.testing.assert_close(got, naive(q, k, v, 0.35, window, sinks), rtol=1e-5, atol=1e-5)


def test_a_window_wider_than_the_keys_changes_nothing():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(6, 4, 8, generator=g), torch.randn(9, 2, 8, generator=g), torch.randn(
        9, 2, 8, generator=g)  # fmt: skip
    torch.testing.assert_close(attend_reference(q, k, v, 0.3, 9), attend_reference(q, k, v, 0.3))


@pytest.mark.parametrize("window, sinks, what", [
    (128, None, "sliding windows"),
    (None, torch.zeros(4), "attention sinks"),
    (128, torch.zeros(4), "sliding windows and attention sinks"),
])
def test_the_triton_backend_refuses_variants_in_one_line(window, sinks, what):
    q = torch.zeros(1, 4, 8)
    with pytest.raises(UnsupportedModel, match=f"does not implement {what} yet") as e:
        TritonBackend().forward(q, None, None, None, 1.0, window=window, sinks=sinks)
    assert "\n" not in str(e.value)
