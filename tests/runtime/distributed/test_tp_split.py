"""TensorSplit's slices, the refusals, and the zigzag split of context-parallel prefill:
pure logic, no processes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from runtime.config import ModelConfig
from runtime.distributed.context_parallel import gather_order, zigzag_spans
from runtime.distributed.split import InvalidParallel, TensorSplit, check_splittable, vocab_bounds
from runtime.local_model import LocalModel, RuntimeOptions
from runtime.models import build_model

CFG = ModelConfig(family="qwen2", vocab_size=1003, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=8, num_kv_heads=4, head_dim=4, attention_bias=True)


def test_each_rank_holds_whole_heads_and_columns_and_its_vocab_rows():
    s = TensorSplit(1, 2, CFG)
    assert s.slice_of("model.layers.0.self_attn.q_proj.weight") == (0, 16, 16)
    assert s.slice_of("model.layers.1.self_attn.k_proj.bias") == (0, 8, 8)
    assert s.slice_of("model.layers.0.self_attn.o_proj.weight") == (1, 16, 16)
    assert s.slice_of("model.layers.0.mlp.up_proj.weight") == (0, 32, 32)
    assert s.slice_of("model.layers.0.mlp.down_proj.weight") == (1, 32, 32)
    assert s.slice_of("lm_head.weight") == (0, 501, 502)
    for whole in ("model.embed_tokens.weight", "model.norm.weight",
                  "model.layers.0.input_layernorm.weight"):
        assert s.slice_of(whole) is None
    assert vocab_bounds(1003, 4) == [0, 250, 501, 752, 1003]


def test_the_ranks_slices_put_together_are_the_whole_model():
    torch.manual_seed(0)
    whole = build_model(CFG)
    parts = []
    for rank in range(4):
        part = build_model(CFG)
        part.load_state_dict(whole.state_dict())
        split = TensorSplit(rank, 4, CFG)
        split.narrow(part)
        split.finish(part)
        parts.append(part)
    attn = [p.model.layers[0].self_attn for p in parts]
    assert attn[0].num_heads == 2 and attn[0].num_kv_heads == 1
    q = torch.cat([a.q_proj.weight for a in attn])
    assert torch.equal(q, whole.model.layers[0].self_attn.q_proj.weight)
    down = torch.cat([p.model.layers[1].mlp.down_proj.weight for p in parts], dim=1)
    assert torch.equal(down, whole.model.layers[1].mlp.down_proj.weight)
    assert attn[0].o_proj.bias is None and attn[0].o_proj.tp_reduce
    assert parts[0].lm_head.tp_gather == (250, 251, 251, 251)


def test_a_tied_head_is_a_view_of_the_embedding_rows():
    cfg = dataclasses.replace(CFG, family="llama", tie_word_embeddings=True,
                              attention_bias=False)
    model = build_model(cfg)
    split = TensorSplit(1, 2, cfg)
    split.narrow(model)
    split.finish(model)
    embed = model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == embed[501].data_ptr()
    assert model.lm_head.weight.shape == (502, 32)


@pytest.mark.parametrize("change, world, words", [
    (dict(num_kv_heads=2, num_heads=6), 4, "does not divide the model's 6 attention heads"),
    (dict(num_kv_heads=2), 4, "does not divide the model's 2 KV heads"),
    (dict(family="qwen3_moe", num_experts=8), 2, "is a mixture of experts"),
    (dict(family="qwen3_next"), 2, "not a dense attention model"),
])
def test_splits_the_model_cannot_take_are_refused_in_one_line(change, world, words):
    with pytest.raises(InvalidParallel, match=words) as e:
        check_splittable(dataclasses.replace(CFG, **change), world)
    assert "\n" not in str(e.value)


def test_open_refuses_before_starting_any_rank(qwen2_folder):
    with pytest.raises(InvalidParallel, match="--tensor-parallel 3 does not divide"):
        LocalModel.open(str(qwen2_folder), RuntimeOptions(device="cpu", tensor_parallel=3))
    with pytest.raises(InvalidParallel, match="native"):
        LocalModel.open(str(qwen2_folder), RuntimeOptions(device="cpu", tensor_parallel=2,
                                                          weights="native"))


@pytest.mark.parametrize("total, world", [(16, 2), (101, 4), (8, 4), (1000, 8)])
def test_zigzag_spans_cover_every_token_once_and_balance_causal_work(total, world):
    spans = [zigzag_spans(total, world, r) for r in range(world)]
    covered = sorted(i for rank in spans for s, e in rank for i in range(s, e))
    assert covered == list(range(total))
    work = [sum((e * (e + 1) - s * (s + 1)) // 2 for s, e in rank) for rank in spans]
    assert max(work) - min(work) <= total * (total // world + 1) // world  # one chunk's share
    order = gather_order(total, world, torch.device("cpu"))
    rows = torch.cat([torch.cat([torch.arange(s, e) for s, e in rank]) for rank in spans])
    gathered = torch.full((world * order.rows,), -1)
    j = 0
    for r, rank in enumerate(spans):
        n = sum(e - s for s, e in rank)
        gathered[r * order.rows : r * order.rows + n] = rows[j : j + n]
        j += n
    assert torch.equal(gathered[order.src], torch.arange(total))
