"""The tokenizer vs transformers: SmolLM2 GGUF, a folder saved from that, a sentencepiece GGUF."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from runtime.errors import CorruptModelFile, UnsupportedModel
from runtime.tokenizer import Tokenizer, read_gguf_tokenizer_metadata

TEXTS = [
    "Hello world",
    "def f(x):\n    return x**2  # square\n\n\n\tpass\r\n",
    "日本語のテキスト、中文字符 한국어 🎉👍🏽👨‍👩‍👧 naïve café Ωμέγα",
    "1234567890 3.14159 -42 1e-9 0x1F 2024-05-01",
    "   leading\t\ttabs  and   runs    \n  \n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>x<|endoftext|><repo_name>glued<file_sep>",
    "<|im_start|> spaced <|im_end|>",
    "",
    " ",
    "\n\n\n",
    "it's I'll they're WE'VE",
    "Ａｂｃ ℌ ﬁ ①②",
    "\u200b\u00a0zero\u2028width\ufeff",
    "a" * 300,
    '{"key": [1, 2, {"nested": null}]}',
    "<|im_start",
]
ALPHABET = "ab Z09\n\t  _-.,'\"<|>éü日本🎉👍🏽\u200d\u00a0"


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces = list(ALPHABET) + ["<|im_start|>", "<|im_end|>", "'s", "    ", "123", "\r\n"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="session")
def gguf_pair(smollm2_gguf):
    """(ours, transformers') tokenizers from the SmolLM2 GGUF."""
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    _use_smollm_pre_tokenizer(ref)
    return Tokenizer.from_gguf(smollm2_gguf), ref


def _use_smollm_pre_tokenizer(ref) -> None:
    """transformers' GGUF converter gives `smollm` GPT-2's split; SmolLM2's tokenizer.json (and
    llama.cpp) split digits one by one first. The reference gets the model's own rule."""
    from tokenizers import pre_tokenizers

    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


@pytest.fixture(scope="session")
def hf_folder(gguf_pair, tmp_path_factory) -> Path:
    """A Hugging Face tokenizer folder, saved by transformers from the GGUF tokenizer."""
    folder = tmp_path_factory.mktemp("smollm2-hf")
    gguf_pair[1].save_pretrained(folder)
    return folder


def _assert_same(ours: Tokenizer, ref, text: str) -> None:
    for special in (False, True):
        ids = ours.encode(text, add_special_tokens=special)
        assert ids == ref.encode(text, add_special_tokens=special), (text, special)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            ), (text, skip)


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_matches_transformers(gguf_pair, text):
    _assert_same(*gguf_pair, text)


def test_gguf_matches_transformers_on_random_text(gguf_pair):
    for text in _random_texts(300):
        _assert_same(*gguf_pair, text)


def test_hf_folder_matches_transformers(hf_folder):
    from transformers import AutoTokenizer

    ours, ref = Tokenizer.from_hf_folder(hf_folder), AutoTokenizer.from_pretrained(hf_folder)
    for text in TEXTS + _random_texts(100, seed=1):
        _assert_same(ours, ref, text)
    assert ours.chat_template == ref.chat_template


def test_smollm2_special_tokens(gguf_pair):
    tok, ref = gguf_pair
    assert tok.vocab_size == len(ref) == 49152
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    # Generation stops at the template's end of turn, and at the pretraining separator.
    assert tok.token_to_id("<|im_end|>") == 2 and tok.eos_ids == {0, 2}
    assert {0, 1, 2} <= tok.special_ids and len(tok.special_ids) == 17
    assert tok.id_to_token(tok.token_to_id("Ġhello")) == "Ġhello"
    assert tok.id_to_token(10**6) is None and tok.token_to_id("not a token!") is None
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_gguf_metadata_reader_matches_transformers(smollm2_gguf):
    from transformers.integrations.gguf.reader import read_gguf_metadata

    ours = read_gguf_tokenizer_metadata(smollm2_gguf)
    arrays = tuple(k for k, v in ours.items() if isinstance(v, list))
    expected, _ = read_gguf_metadata(str(smollm2_gguf), arrays)
    assert len(ours) == 12 and ours == {k: expected[k] for k in ours}


# --- folders: bos handling and stop ids -------------------------------------------------------


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _bos_post_processor() -> dict:
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            bos,
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {
            "<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}
        },
    }


def test_folder_post_processor_bos_is_not_doubled(hf_folder, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(hf_folder, tmp_path / "bos")
    _edit_json(folder / "tokenizer.json", post_processor=_bos_post_processor())
    _edit_json(folder / "tokenizer_config.json", add_bos_token=True)
    ours, ref = Tokenizer.from_hf_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.encode("hi", add_special_tokens=True) == ref.encode("hi") == [1, 6004]
    assert ours.encode("hi") == [6004]


def test_folder_add_bos_without_post_processor(hf_folder, tmp_path):
    # No post-processor adds bos, so the config's add_bos_token is honoured by hand.
    folder = shutil.copytree(hf_folder, tmp_path / "cfg")
    _edit_json(folder / "tokenizer_config.json", add_bos_token=True)
    tok = Tokenizer.from_hf_folder(folder)
    assert tok.encode("hi", add_special_tokens=True) == [1, 6004]
    assert tok.encode("", add_special_tokens=True) == [1]


def test_folder_generation_config_and_template_file(hf_folder, tmp_path):
    folder = shutil.copytree(hf_folder, tmp_path / "gen")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    _edit_json(
        folder / "tokenizer_config.json", chat_template=[{"name": "default", "template": "T"}]
    )
    tok = Tokenizer.from_hf_folder(folder)
    assert tok.eos_ids == {0, 2, 7} and tok.chat_template == "T"


def test_folder_truncation_settings_are_ignored(hf_folder, tmp_path):
    folder = shutil.copytree(hf_folder, tmp_path / "trunc")
    truncation = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    _edit_json(folder / "tokenizer.json", truncation=truncation)
    text = "one two three four five six seven"
    assert len(Tokenizer.from_hf_folder(folder).encode(text)) == 7


def test_folder_without_tokenizer_json(tmp_path):
    with pytest.raises(CorruptModelFile, match="tokenizer.json"):
        Tokenizer.from_hf_folder(tmp_path)


# --- GGUF: sentencepiece vocabularies and bad files ----------------------------------------------


def _write_spm_gguf(path: Path, *, kind: str = "llama") -> None:
    """A small llama-style (sentencepiece) GGUF: byte tokens, ▁-words, no merges, two controls."""
    import gguf
    import numpy as np

    corpus = "the quick brown fox jumps over the lazy dog hello world def return café naïve 日本"
    words = sorted({"▁" + w for w in corpus.split()})
    subs = sorted({w[:i] for w in words for i in range(2, len(w))})
    chars = sorted(set(corpus.replace(" ", "")) | {"▁"})
    normal = chars + [s for s in subs if s not in chars] + [w for w in words if w not in subs]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *normal]
    tokens += ["<|im_start|>", "<|im_end|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(normal) + [3, 3]
    scores = [0.0] * 259 + [-float(i) for i in range(len(normal))] + [0.0, 0.0]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(kind)
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_sentencepiece_gguf_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    _write_spm_gguf(tmp_path / "spm.gguf")
    ours = Tokenizer.from_gguf(tmp_path / "spm.gguf")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    texts = ["the quick brown fox", " hello  world\n", "café 日本語 🎉", "xyz QQ", ""]
    for text in texts + ["<|im_start|>hi<|im_end|>"] + _random_texts(50, seed=2):
        _assert_same(ours, ref, text)
    assert ours.encode("the", add_special_tokens=True)[0] == 1  # llama files add bos by default
    assert ours.eos_ids == {2, ours.token_to_id("<|im_end|>")}


def test_unsupported_gguf_tokenizer(tmp_path):
    _write_spm_gguf(tmp_path / "bert.gguf", kind="bert")
    with pytest.raises(UnsupportedModel, match="gpt2, llama"):
        Tokenizer.from_gguf(tmp_path / "bert.gguf")


@pytest.mark.parametrize(
    "content", [b"", b"GGUF\x03\x00\x00\x00" + b"\xff" * 20, b"PK\x03\x04" * 8]
)
def test_corrupt_gguf(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(CorruptModelFile):
        Tokenizer.from_gguf(path)


def _write_byte_level_gguf(path: Path, pre: str) -> None:
    """A small byte-level BPE GGUF: the 256 byte symbols, a few merges, control and user tokens."""
    import gguf
    import numpy as np

    from runtime.tokenizer import _byte_alphabet

    symbols = [_byte_alphabet()[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "1 2", "12 3", "Ġ Ġ", "ĠĠ ĠĠ", "' s", "Ċ Ċ", "i n", "Ġ in"]
    tokens = [*symbols, *(m.replace(" ", "") for m in merges)]
    tokens += ["<|endoftext|>", "<|im_end|>", "<think>", "<bad ctrl>"]
    types = [1] * (len(tokens) - 4) + [3, 3, 4, 3]  # "<bad ctrl>" has a space: a mislabel
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 4)
    w.add_eos_token_id(len(tokens) - 3)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "llama-bpe", "qwen2", "gpt-4o", "tekken"])
def test_byte_level_pre_tokenizers_match_transformers(tmp_path, pre):
    from transformers import AutoTokenizer

    _write_byte_level_gguf(tmp_path / "bl.gguf", pre)
    ours = Tokenizer.from_gguf(tmp_path / "bl.gguf")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="bl.gguf")
    if pre == "smollm":
        _use_smollm_pre_tokenizer(ref)
    texts = [
        "the 12345 1234567 thin in\n\n\nit's HE'S he's",
        "    four  spaces\t\ttab\r\n\r\nCRLF 3.14",
        "<think>x</think><|im_end|><bad ctrl>日本 🎉 ÀÉ",
    ]
    for text in texts + _random_texts(50, seed=3):
        _assert_same(ours, ref, text)
    assert ours.token_to_id("<think>") not in ours.special_ids  # user-defined: whole, not special
    assert ours.encode("a<think>b")[1] == ours.token_to_id("<think>")
