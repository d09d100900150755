"""`native` GGUF weights on the CPU: the same model dequantized is the reference.

Tolerance (derived in docs/benchmarks.md, "Quantized weights on the CPU"): with fp32
activations the packed weights equal the dequantized ones to an ulp and only the summation
order differs, so logits agree to 1e-5 of the logit scale and greedy decoding is identical;
bf16 activations round every linear's input, and the logits agree to a few percent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from runtime.kernels.cpu_quant import Int4Linear
from runtime.loader import load_model
from tests.runtime.helpers import PagedRunner, assert_close_logits, prompt_ids, tiny_hf_model
from tests.runtime.test_loaders import DEFAULT, write_gguf

pytest.importorskip("transformers")

CASES = [("llama-q4_1", "LlamaConfig", "llama", Q.Q4_1, 2, True),
         ("qwen3-q4_0", "Qwen3Config", "qwen3", Q.Q4_0, 1, False)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_native_fp32_matches_the_dequantized_model(case, tmp_path):
    _, cls_name, arch, qtype, gqa, tied = case
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_hf_model(cls_name, DEFAULT, gqa, tied, {}), arch, qtype, DEFAULT)
    ref, native = load_model(path), load_model(path, native=True)
    packed = [m for m in native.model.modules() if isinstance(m, Int4Linear)]
    assert len(packed) == 2 * 7 + (0 if tied else 1)  # q k v o gate up down per layer, head
    assert native.weights_id != ref.weights_id  # never share KV pages with the fp32 model
    native.model.fuse_projections()  # gate/up rows (96) are not aligned: they stay apart
    ids = prompt_ids(256, 70)
    got = PagedRunner(native.model, native.config).prefill(ids, [9, 30])
    want = PagedRunner(ref.model, ref.config).prefill(ids, [9, 30])
    assert_close_logits(got, want, rel=1e-5)
    a = PagedRunner(native.model, native.config).greedy(ids, 32, [40])
    assert a == PagedRunner(ref.model, ref.config).greedy(ids, 32, [40])


def test_native_bf16_is_no_worse_than_dequantized_bf16(tmp_path):
    """bf16 compute rounds activations either way; the packed weights add only the rounding
    of their scales, so against fp32 the error stays that of today's bf16 path."""
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_hf_model("LlamaConfig", DEFAULT, 2, False, {}), "llama", Q.Q4_1,
               DEFAULT)
    ids = prompt_ids(256, 40)

    def logits(dtype: torch.dtype, native: bool) -> torch.Tensor:
        loaded = load_model(path, dtype, native=native)
        return PagedRunner(loaded.model, loaded.config, dtype=dtype).prefill(ids, [20, 39])

    want = logits(torch.float32, False)
    native_err = (logits(torch.bfloat16, True) - want).abs().max()
    bf16_err = (logits(torch.bfloat16, False) - want).abs().max()
    assert 0 < native_err <= 1.5 * bf16_err


def test_native_is_ignored_off_the_cpu_path_types(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_hf_model("LlamaConfig", DEFAULT, 2, False, {}), "llama", Q.Q8_0,
               DEFAULT)
    loaded = load_model(path, native=True)  # Q8_0: no int4 blocks, everything dequantized
    assert not any(isinstance(m, Int4Linear) for m in loaded.model.modules())


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.F32])
def test_tied_table_is_held_once_and_lookups_read_the_file(qtype, tmp_path):
    """On the CPU the head keeps the one dense table; lookups dequantize the file's rows and
    equal that table's rows exactly (same gguf dequantize, same cast)."""
    from gguf.quants import dequantize

    from runtime.engine.cpu_layout import OneDnnLinear, use_onednn
    from runtime.kernels.cpu_quant import GGUFEmbedding
    from runtime.loader.gguf_file import read_gguf

    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_hf_model("LlamaConfig", DEFAULT, 2, True, {}), "llama", qtype, DEFAULT)
    loaded = load_model(path, torch.bfloat16, native=True)
    model = loaded.model
    assert isinstance(model.model.embed_tokens, GGUFEmbedding)
    gf = read_gguf(path)
    info = gf.tensors["token_embd.weight"]
    table = torch.from_numpy(np.array(dequantize(gf.raw(info), info.qtype))).to(torch.bfloat16)
    assert torch.equal(model.packed_head.weight, table)
    ids = torch.tensor([0, 5, 255, 5])
    assert torch.equal(model.model.embed_tokens(ids), table[ids])
    tables = [n for n, t in model.named_parameters() if t.shape == table.shape]
    assert tables == ["packed_head.weight"]
    use_onednn(model)
    assert isinstance(model.packed_head, OneDnnLinear)
    assert not any(t.shape == table.shape for t in model.parameters())
