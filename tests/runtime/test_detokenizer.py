"""Streaming detokenization: pieces concatenate to `decode(all ids)`, never half a character."""

from __future__ import annotations

import random

import pytest

from runtime.detokenizer import WINDOW, StreamDecoder
from runtime.tokenizer import Tokenizer, _sentencepiece_backend

SPLIT_TEXT = "ok 👍🏽 日本語テキスト 👨‍👩‍👧 naïve — ẞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <|im_end|> end"


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def spm() -> Tokenizer:
    """A small sentencepiece-style tokenizer: ▁ words, byte fallback, strip of the first space."""
    words = ["▁the", "▁fox", "▁日", "he", "th", "▁t", "▁f", "ox"]
    chars = ["▁", "t", "h", "e", "f", "o", "x", "日"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *chars, *words]
    tokens.append("<|im_end|>")
    meta = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(chars + words))] + [0],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(chars + words) + [3],
    }
    return Tokenizer(_sentencepiece_backend(meta), bos_id=1, eos_id=2)


def _stream(tok: Tokenizer, ids: list[int], skip: bool = False, context=None) -> list[str]:
    decoder = StreamDecoder(tok, skip_special_tokens=skip, context=context)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_split_characters_are_held_back(smollm2):
    ids = smollm2.encode(SPLIT_TEXT)
    halves = [i for i in ids if "\ufffd" in smollm2.decode([i])]
    assert len(halves) >= 4, "the text should split characters across tokens"
    pieces = _stream(smollm2, ids)
    assert "".join(pieces) == smollm2.decode(ids) == SPLIT_TEXT
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[-1] == ""  # nothing left for flush when the stream ends on a whole character


@pytest.mark.parametrize("skip", [False, True])
def test_special_tokens(smollm2, skip):
    ids = smollm2.encode("<|im_start|>assistant\nHi 🎉<|im_end|>\n<|endoftext|>")
    assert "".join(_stream(smollm2, ids, skip)) == smollm2.decode(ids, skip_special_tokens=skip)


def test_unfinished_character_comes_out_at_flush(smollm2):
    ids = smollm2.encode("a🎉")[:-1]  # stop in the middle of the emoji
    pieces = _stream(smollm2, ids)
    assert "\ufffd" not in "".join(pieces[:-1]) and pieces[-1].endswith("\ufffd")
    assert "".join(pieces) == smollm2.decode(ids)


def test_sentencepiece_spaces_and_byte_fallback(spm):
    ids = spm.encode("the fox 日 x€ the")
    assert spm.id_to_token(ids[0]) == "▁the"  # the first token carries the space decode strips
    assert any(spm.id_to_token(i).startswith("<0x") for i in ids)  # € goes through byte fallback
    pieces = _stream(spm, ids)
    assert "".join(pieces) == spm.decode(ids) == "the fox 日 x€ the"
    assert not any("\ufffd" in p for p in pieces)


def test_context_keeps_the_leading_space(spm):
    prompt, reply = spm.encode("the"), spm.encode(" fox the")
    text = "".join(_stream(spm, reply, context=prompt))
    full = spm.decode(prompt + reply)
    assert text == full[len(spm.decode(prompt)) :] == " fox the"


def test_window_stays_short_on_long_streams(smollm2):
    ids = smollm2.encode("Hello, wörld! 日本 👍🏽 " * 200)
    decoder = StreamDecoder(smollm2)
    out = []
    for i in ids:
        out.append(decoder.push(i))
        assert len(decoder._ids) <= WINDOW
    assert "".join(out) + decoder.flush() == smollm2.decode(ids)


# --- properties: any id sequence, any skip setting ----------------------------------------------


def _check_random_ids(tok: Tokenizer, ids: list[int], skip: bool) -> None:
    assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip), ids


def _byte_heavy_ids(tok: Tokenizer, rng: random.Random, n: int) -> list[int]:
    # Mostly pieces of multi-byte characters and specials: the cases that go wrong.
    pool = tok.encode(SPLIT_TEXT) + [0, 1, 2] + [rng.randrange(tok.vocab_size) for _ in range(50)]
    return [rng.choice(pool) for _ in range(n)]


@pytest.mark.parametrize("name", ["smollm2", "spm"])
def test_random_id_sequences(request, name):
    tok = request.getfixturevalue(name)
    rng = random.Random(1234)
    for _ in range(300):
        _check_random_ids(tok, _byte_heavy_ids(tok, rng, rng.randint(0, 40)), rng.random() < 0.5)


def test_hypothesis_property(smollm2, spm):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(
        text=st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
        extra=st.lists(st.integers(0, 300), max_size=8),
        skip=st.booleans(),
    )
    def check(text, extra, skip):
        for tok in (smollm2, spm):
            ids = tok.encode(text) + extra  # text, then raw bytes / specials / odd tokens
            _check_random_ids(tok, ids, skip)

    check()
