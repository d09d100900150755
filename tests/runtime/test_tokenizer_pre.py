"""GGUF pre-tokenizers split text as llama.cpp's table says (and as the models' tokenizer.json).

Three references: the split rules themselves on texts whose pieces are known; SmolLM2's own
Hugging Face pre-tokenizer (its tokenizer.json: individual digits, then GPT-2's byte-level
regex) over a corpus of real source files; and llama.cpp's `llama-tokenize` when one is built
(set LLAMA_TOKENIZE to its path; bench/cpu_generate.py --build-llama-cpp builds one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from tokenizers import Regex, pre_tokenizers

from runtime.errors import UnsupportedModel
from runtime.tokenizer import Tokenizer, _byte_level_pre_tokenizer
from runtime.tokenizer_pre import GGUF_PRE_RULES, NOT_BYTE_LEVEL, gguf_pre_rule


def _pieces(pre: str, text: str) -> list[str]:
    """The pieces a rule cuts `text` into, spelled as text again (not byte-level)."""
    steps = [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in gguf_pre_rule(pre).splits]
    return [p for p, _ in pre_tokenizers.Sequence(steps).pre_tokenize_str(text)]


@pytest.mark.parametrize("name", sorted(GGUF_PRE_RULES))
def test_every_rule_compiles_and_keeps_every_character(name):
    pre = _byte_level_pre_tokenizer(gguf_pre_rule(name))
    text = "Hello, World's 1234567 日本語 \n\n  x\tÀé 🎉 <tag> a/b"
    assert "".join(p for p, _ in pre.pre_tokenize_str(text))  # builds and runs
    assert "".join(_pieces(name, text)) == text


@pytest.mark.parametrize(
    ("pre", "text", "pieces"),
    [
        ("smollm", "x = 2024", ["x", " =", " ", "2", "0", "2", "4"]),
        ("starcoder", "v12", ["v", "1", "2"]),
        ("gpt-2", "x = 2024", ["x", " =", " 2024"]),
        ("llama3", "x = 2024567", ["x", " =", " ", "202", "456", "7"]),
        ("qwen2", "a 123", ["a", " ", "1", "2", "3"]),
        ("deepseek-v3", "abc 12345", ["abc", " ", "123", "45"]),
        ("tiny_aya", "1234567", ["1", "234", "567"]),
        ("falcon", "a+b 1234", ["a", "+", "b", " ", "123", "4"]),
        ("laguna", "a\n\nb", ["a", "\n\n", "b"]),
    ],
)
def test_rules_split_as_llama_cpp(pre, text, pieces):
    assert _pieces(pre, text) == pieces


def test_missing_pre_is_gpt2_and_unknown_or_raw_utf8_names_are_refused():
    assert gguf_pre_rule(None) == gguf_pre_rule("gpt-2") == gguf_pre_rule("")
    with pytest.raises(UnsupportedModel, match="unknown GGUF pre-tokenizer 'nope'"):
        gguf_pre_rule("nope")
    for name in NOT_BYTE_LEVEL:
        with pytest.raises(UnsupportedModel, match="raw UTF-8"):
            gguf_pre_rule(name)


def test_llama3_ignores_merges_for_whole_vocabulary_pieces():
    assert gguf_pre_rule("llama-bpe").ignore_merges and not gguf_pre_rule("smollm").ignore_merges


# --- SmolLM2: the real GGUF against its own tokenizer.json rules, over real source files -------


def _corpus(limit_chars: int = 60_000) -> list[str]:
    """Real source files: some of Python's standard library, read as text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = ["textwrap.py", "fractions.py", "json/encoder.py", "csv.py", "calendar.py"]
    texts = [(stdlib / n).read_text(encoding="utf-8") for n in names if (stdlib / n).is_file()]
    return [t[:limit_chars] for t in texts]


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf):
    """(ours from the GGUF, SmolLM2's Hugging Face tokenizer) — the latter is transformers'
    conversion of the same vocabulary and merges with the pre-tokenizer of SmolLM2's
    tokenizer.json (Digits(individual_digits) then ByteLevel), which the converter lacks."""
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return Tokenizer.from_gguf(smollm2_gguf), ref


def test_smollm2_gguf_matches_its_tokenizer_json_on_source_files(smollm2_pair):
    ours, ref = smollm2_pair
    corpus = _corpus()
    assert sum(len(t) for t in corpus) > 50_000
    for text in corpus:
        ids = ours.encode_text(text)
        assert ids == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text
    assert ours.encode("x = 2024")[-4:] == [ours.token_to_id(d) for d in "2024"]


def _llama_tokenize() -> str | None:
    path = os.environ.get("LLAMA_TOKENIZE") or shutil.which("llama-tokenize")
    return path if path and os.access(path, os.X_OK) else None


@pytest.mark.slow
@pytest.mark.skipif(_llama_tokenize() is None, reason="no llama-tokenize built (LLAMA_TOKENIZE)")
def test_smollm2_gguf_matches_llama_cpp_on_source_files(smollm2_gguf, smollm2_pair, tmp_path):
    ours = smollm2_pair[0]
    for i, text in enumerate(_corpus(20_000)):
        path = tmp_path / f"t{i}.txt"
        path.write_text(text, encoding="utf-8")
        # --no-escape: the file is source text; by default the tool turns "\\n" into a newline.
        out = subprocess.run(
            [_llama_tokenize(), "-m", str(smollm2_gguf), "-f", str(path), "--ids",
             "--no-bos", "--log-disable", "--no-parse-special", "--no-escape"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
        theirs = [int(t) for t in out.strip().splitlines()[-1].strip("[]").split(",") if t]
        assert ours.encode_text(text) == theirs, path
