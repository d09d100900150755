"""A session's model builds the grammar tokenizer while its weights load, so the first
constrained generation does not wait for it."""

from __future__ import annotations

import threading

from runtime import constraints
from runtime.local_model import LocalModel, RuntimeOptions


def test_open_for_a_session_prepares_the_grammar_tokenizer(smollm2_gguf, tmp_path):
    model = LocalModel.open(str(smollm2_gguf), RuntimeOptions(device="cpu", constraints=True,
                                                              cache_dir=tmp_path))
    try:
        for t in threading.enumerate():
            if t.name == "grammar-tokenizer":
                t.join(60)
        assert model.tokenizer in constraints._CACHE
        c = constraints.text_only_constraint(model.tokenizer, model.tokenizer.eos_ids)
        assert c is not None
    finally:
        model.close()
