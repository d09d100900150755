"""The hybrid linear-attention families against transformers on the same weights.

Tiny random Qwen3-Next (grouped projections, a dense layer among MoE ones, GQA value heads),
Qwen3.5 dense and Qwen3.5-MoE checkpoints, saved as transformers writes them and loaded by our
loader. Chunked prefill with uneven chunks (one to twenty tokens, across 16-token pages and
the scan's 64-token chunks) must give fp32 logits within 1e-4 of the logit scale at every
position; greedy 64 tokens must be identical.
"""

from __future__ import annotations

import pytest
import torch

from runtime.config import LINEAR, ModelConfig
from runtime.errors import UnsupportedModel
from runtime.kernels import torch_linear_attn as ref
from runtime.kernels import torch_mamba2 as ssd
from runtime.loader import load_model
from tests.runtime.helpers import PagedRunner, check_greedy, check_prefill, prompt_ids

transformers = pytest.importorskip("transformers")

LINEAR_DIMS = {"linear_conv_kernel_dim": 4, "linear_key_head_dim": 16,
               "linear_value_head_dim": 8, "linear_num_key_heads": 2,
               "linear_num_value_heads": 4}  # fmt: skip
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
       "shared_expert_intermediate_size": 48}  # fmt: skip
LAYERS = ["linear_attention", "full_attention", "linear_attention", "linear_attention"]
CASES = [
    ("qwen3_next-moe-dense1", "Qwen3NextConfig",
     {**MOE, "mlp_only_layers": [2], "norm_topk_prob": True}),
    ("qwen3_5-dense", "Qwen3_5TextConfig", {}),
    ("qwen3_5_moe", "Qwen3_5MoeTextConfig", MOE),
]
PROMPT_LEN, NEW_TOKENS = 150, 64
CHUNKS = [5, 11, 17, 1, 20, 70]  # uneven, across pages and a 64-token scan chunk


def tiny_hybrid(cls_name: str, extra: dict):
    """A random 4-layer hybrid transformers model (3 DeltaNet layers, 1 gated attention)."""
    config = getattr(transformers, cls_name)(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        layer_types=LAYERS, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        **LINEAR_DIMS, **extra,
    )  # fmt: skip
    # Zero-centred norms (x * (1 + w)) except the DeltaNet output norm (x * w).
    centre = lambda name: float("linear_attn.norm" in name)  # noqa: E731
    return random_model(config, centre, ("A_log", "dt_bias"))


def random_model(config, norm_centre, unit_params: tuple[str, ...]):
    """The transformers model of `config` with seeded random weights: norms `norm_centre(name)`
    plus N(0, 0.2) noise, the decay parameters `unit_params` uniform in (0, 1) (a real model's
    range), the rest N(0, 0.2), large enough that greedy steps are no ties."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_centre(name) + 0.2 * torch.randn_like(p))
            elif name.endswith(unit_params):
                p.copy_(torch.rand_like(p))
            else:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    _, cls_name, extra = request.param
    hf = tiny_hybrid(cls_name, extra)
    path = tmp_path_factory.mktemp(request.param[0])
    hf.save_pretrained(path)
    return hf, load_model(path, dtype=torch.float32)


def test_config_reads_the_layer_pattern(pair):
    _, loaded = pair
    cfg: ModelConfig = loaded.config
    assert [cfg.is_linear_layer(i) for i in range(4)] == [t == LINEAR for t in LAYERS]
    assert cfg.rotary_dim == 4  # partial_rotary_factor 0.25 of head_dim 16
    assert cfg.linear_attention is not None and cfg.linear_attention.num_value_heads == 4


def test_chunked_prefill_logits_match(pair):
    check_prefill(*pair, PROMPT_LEN, CHUNKS)


def test_greedy_tokens_match(pair):
    check_greedy(*pair, 70, NEW_TOKENS, [33, 1])


def test_state_pool_rejects_a_forward_that_skips_tokens(pair):
    _, loaded = pair
    runner = PagedRunner(loaded.model, loaded.config)
    runner.extend(prompt_ids(256, 10))
    runner.states.tokens[runner.slot] = 7  # as if the state were from an earlier point
    with pytest.raises(AssertionError, match="covers 7 tokens; the forward starts at 10"):
        runner.extend([1, 2])


def test_fork_of_the_state_continues_identically(pair):
    _, loaded = pair
    ids = prompt_ids(256, 40, seed=5)
    a = PagedRunner(loaded.model, loaded.config)
    a.prefill(ids, [23])
    b = PagedRunner(loaded.model, loaded.config)
    b.prefill(ids, [23])
    snap = a.states.snapshot(a.slot)
    b.states.restore(b.slot, {k: v.clone() for k, v in snap.items()}, 40)
    assert torch.equal(a.extend([9, 8, 7]), b.extend([9, 8, 7]))


def test_unknown_layer_type_is_a_clear_error(tmp_path):
    hf = tiny_hybrid("Qwen3_5TextConfig", {})
    hf.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"full_attention"', '"mamba"')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(UnsupportedModel, match="unsupported layer_types"):
        load_model(tmp_path, dtype=torch.float32)


@pytest.mark.parametrize("length", [1, 5, 64, 65, 130])
@pytest.mark.parametrize("rep", [1, 2])
def test_chunked_scan_equals_the_recurrent_steps(length, rep):
    g = torch.Generator().manual_seed(length * rep)
    hk, hv, dk, dv = 2, 2 * rep, 8, 4
    q, k = (torch.randn(length, hk, dk, generator=g) for _ in range(2))
    v = torch.randn(length, hv, dv, generator=g)
    decay = -torch.rand(length, hv, generator=g)
    beta = torch.rand(length, hv, generator=g)
    state0 = torch.randn(hv, dk, dv, generator=g)
    out, state = ref.gated_delta_chunked(q, k, v, decay, beta, state0, chunk=16)
    s, steps = state0[None], []
    for t in range(length):
        o, s = ref.gated_delta_step(q[t : t + 1], k[t : t + 1], v[t : t + 1],
                                    decay[t : t + 1], beta[t : t + 1], s)
        steps.append(o)
    torch.testing.assert_close(out, torch.cat(steps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, s[0], rtol=1e-5, atol=1e-5)


def test_conv_step_equals_the_conv():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(9, 6, generator=g), torch.randn(6, 4, generator=g)
    out, state = ref.causal_conv(x, torch.zeros(6, 3), w)
    s, steps = torch.zeros(1, 6, 3), []
    for t in range(9):
        o, s = ref.causal_conv_step(x[t : t + 1], s, w)
        steps.append(o)
    torch.testing.assert_close(out, torch.cat(steps))
    torch.testing.assert_close(state, s[0])


NEMOTRON_LAYERS = ["linear_attention", "mlp", "full_attention", "linear_attention", "mlp"]


def tiny_nemotron():
    """A random 5-block Nemotron-H: two Mamba-2 mixers (2 groups of 4 heads), attention, MLPs."""
    config = transformers.NemotronHConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, layers_block_type=NEMOTRON_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2, conv_kernel=4,
        chunk_size=32, layer_norm_epsilon=1e-5, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return random_model(config, lambda name: 1.0, ("A_log", "dt_bias", "D"))


@pytest.fixture(scope="module")
def nemotron_pair(tmp_path_factory):
    hf = tiny_nemotron()
    path = tmp_path_factory.mktemp("nemotron_h")
    hf.save_pretrained(path)
    return hf, load_model(path, dtype=torch.float32)


def test_nemotron_h_chunked_prefill_logits_match(nemotron_pair):
    check_prefill(*nemotron_pair, PROMPT_LEN, CHUNKS)


def test_nemotron_h_greedy_tokens_match(nemotron_pair):
    check_greedy(*nemotron_pair, 70, NEW_TOKENS, [33, 1])


def test_nemotron_h_moe_blocks_are_a_clear_error(tmp_path):
    hf = tiny_nemotron()
    hf.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"mlp"', '"moe"')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(UnsupportedModel, match="unsupported Nemotron-H blocks"):
        load_model(tmp_path, dtype=torch.float32)


@pytest.mark.parametrize("length", [1, 7, 32, 70])
def test_ssd_chunked_scan_equals_the_recurrent_steps(length):
    g = torch.Generator().manual_seed(length)
    h, p, n, groups = 4, 3, 5, 2
    x = torch.randn(length, h, p, generator=g)
    dt = torch.randn(length, h, generator=g)
    a, d, bias = -torch.rand(h, generator=g), torch.rand(h, generator=g), torch.rand(h, generator=g)
    b, c = (torch.randn(length, groups, n, generator=g) for _ in range(2))
    state0 = torch.randn(h, p, n, generator=g)
    y, state = ssd.ssd_chunked(x, dt, a, b, c, d, bias, 0.0, state0, chunk=16)
    s, steps = state0[None], []
    for t in range(length):
        o, s = ssd.ssd_step(x[t : t + 1], dt[t : t + 1], a, b[t : t + 1], c[t : t + 1], d, bias, s)
        steps.append(o)
    torch.testing.assert_close(y, torch.cat(steps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, s[0], rtol=1e-5, atol=1e-5)
