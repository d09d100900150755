"""Text to token ids and back, from a Hugging Face folder or a GGUF file's metadata.

Both sources become one `tokenizers.Tokenizer`, built to give exactly the ids `transformers`
gives for the same source (`AutoTokenizer.from_pretrained(folder)` or `(..., gguf_file=...)`).

Stop tokens (`eos_ids`): the declared eos id, the folder's `generation_config.json` eos ids, and
every end-of-turn marker in `END_OF_TURN_TOKENS` that the vocabulary holds as a special token.
GGUF files often declare an eos that is not what the chat template ends a turn with (SmolLM2's
template closes turns with `<|im_end|>`, Llama 3.1's with `<|eot_id|>`), so generation must stop
on the template's markers too.
"""

from __future__ import annotations

import json
import mmap
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from runtime.errors import CorruptModelFile, UnsupportedModel
from runtime.tokenizer_pre import GPT2_SPLIT, PreTokenizerRule, gguf_pre_rule

# Markers that end a turn in the chat templates we serve; stop tokens when special in the vocab.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
)

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's tokenizer.ggml.token_type values

class Tokenizer:
    """A `tokenizers.Tokenizer` plus what the runtime needs around it: bos, stop ids, template.

    `encode` matches transformers' `tokenizer.encode(text, add_special_tokens=...)`; special
    tokens written in the text (`<|im_start|>`) become their ids, as in transformers.
    `encode_text` never gives a special id: it is for text the chat template did not write.
    `decode` never applies transformers' `clean_up_tokenization_spaces`: the text must spell
    exactly what the ids are, for the append-only token log.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
        extra_eos_ids: tuple[int, ...] = (),
    ):
        # Some tokenizer.json files carry truncation or padding settings; transformers turns
        # them off for encode(), and a prompt must never be cut silently.
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id  # the declared eos (the template's `eos_token`)
        self.chat_template = chat_template
        self.special_ids: frozenset[int] = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        # A copy that spells special tokens written in text as plain text: for everything that
        # is not the chat template's own markup (file contents, tool results, prompts).
        self._text_backend = Backend.from_str(backend.to_str())
        self._text_backend.encode_special_tokens = True
        self.eos_ids: frozenset[int] = self._stop_ids(extra_eos_ids)
        self.byte_fallback_ids: frozenset[int] = self._byte_fallback_ids()
        # A folder's post-processor may already add bos/eos; then we must not add them again.
        handled = bool(backend.encode("", add_special_tokens=True).ids)
        self._prefix = [bos_id] if add_bos and bos_id is not None and not handled else []
        self._suffix = [eos_id] if add_eos and eos_id is not None and not handled else []

    @classmethod
    def from_hf_folder(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json`, chat template files) of a folder."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise CorruptModelFile(
                f"{path} has no tokenizer.json; only fast (tokenizers) "
                "tokenizers are supported; convert it with transformers"
            )
        backend = Backend.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        bos = _token_id(backend, config.get("bos_token"))
        eos = _token_id(backend, config.get("eos_token"))
        generation_eos = _as_tuple(_read_json(path / "generation_config.json").get("eos_token_id"))
        return cls(
            backend,
            bos_id=bos,
            eos_id=eos,
            add_bos=bool(config.get("add_bos_token", False)),
            add_eos=bool(config.get("add_eos_token", False)),
            chat_template=_folder_template(path, config),
            extra_eos_ids=generation_eos,
        )

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Build from a GGUF file's `tokenizer.*` metadata (byte-level BPE or sentencepiece BPE)."""
        meta = read_gguf_tokenizer_metadata(Path(path))
        kind = meta.get("tokenizer.ggml.model")
        builder = _GGUF_BUILDERS.get(kind)
        if builder is None:
            raise UnsupportedModel(
                f"GGUF tokenizer {kind!r} is not supported; supported: "
                f"{', '.join(sorted(_GGUF_BUILDERS))}"
            )
        backend = builder(meta)
        add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
        return cls(
            backend,
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(add_bos),
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            chat_template=meta.get("tokenizer.chat_template"),
        )

    # --- the interface ------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, bos/eos as the model's config asks."""
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens:
            return self._prefix + ids + self._suffix
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` as plain text: `<|im_end|>` written in it is spelled piece by
        piece, never the special id (so a file cannot forge a chat turn)."""
        return self._text_backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """The text `ids` spell (invalid UTF-8 becomes U+FFFD, as in transformers)."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (byte-level spelling for BPE vocabularies), or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of an id, or None when out of range."""
        return self.backend.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token(self) -> str:
        """The bos token's text ("" when the model has none), for chat templates."""
        return self._text_of(self.bos_id)

    @property
    def eos_token(self) -> str:
        """The declared eos token's text ("" when none), for chat templates."""
        return self._text_of(self.eos_id)

    def _text_of(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.backend.id_to_token(token_id) or ""

    def _byte_fallback_ids(self) -> frozenset[int]:
        """Ids of `<0xXX>` tokens when the model spells unknown characters byte by byte."""
        if not getattr(self.backend.model, "byte_fallback", False):
            return frozenset()
        ids = (self.backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
        return frozenset(i for i in ids if i is not None)

    def _stop_ids(self, extra: tuple[int, ...]) -> frozenset[int]:
        ids = {i for i in (self.eos_id, *extra) if i is not None}
        for token in END_OF_TURN_TOKENS:
            token_id = self.backend.token_to_id(token)
            if token_id is not None and token_id in self.special_ids:
                ids.add(token_id)
        return frozenset(ids)


# --- Hugging Face folders -------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorruptModelFile(f"{path} is not valid JSON ({e}); pull the model again") from e


def _token_id(backend: Backend, token: str | dict | None) -> int | None:
    # tokenizer_config writes special tokens either as text or as a serialized AddedToken.
    if isinstance(token, dict):
        token = token.get("content")
    return backend.token_to_id(token) if token else None


def _as_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def _folder_template(path: Path, config: dict[str, Any]) -> str | None:
    """The chat template: `chat_template.jinja`, `chat_template.json`, or tokenizer_config's."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _read_json(path / "chat_template.json").get("chat_template")
    template = template or config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    return template


# --- GGUF ---------------------------------------------------------------------------------------


def read_gguf_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The `tokenizer.*` key/values of a GGUF file, as Python values.

    A direct read of the key/value section: gguf.GGUFReader also maps every tensor and builds
    an array per vocabulary string, which takes seconds for a 50K vocabulary.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return {k: v for k, v in _GGUFFields(buf) if k.startswith("tokenizer.")}
    except (ValueError, OSError, struct.error, UnicodeDecodeError) as e:
        raise CorruptModelFile(f"{path} is not a readable GGUF file ({e}); pull it again") from e


class _GGUFFields:
    """Iterates (key, value) over a GGUF (v2/v3, little-endian) header's metadata."""

    _SCALARS = {
        0: "B",
        1: "b",
        2: "H",
        3: "h",
        4: "I",
        5: "i",
        6: "f",
        7: "?",
        10: "Q",
        11: "q",
        12: "d",
    }
    _STRING, _ARRAY = 8, 9

    def __init__(self, buf: mmap.mmap):
        if buf[:4] != b"GGUF":
            raise ValueError("bad magic")
        version, _tensors, self.count = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        self.buf, self.pos = buf, 24

    def __iter__(self):
        for _ in range(self.count):
            key = self._string()
            (kind,) = self._unpack("<I")
            yield key, self._value(kind)

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = self._unpack("<Q")
        self.pos += n
        return self.buf[self.pos - n : self.pos].decode("utf-8")

    def _value(self, kind: int) -> Any:
        if kind == self._STRING:
            return self._string()
        if kind == self._ARRAY:
            inner, n = self._unpack("<IQ")
            if inner in self._SCALARS:  # one unpack for the whole numeric array
                return list(self._unpack(f"<{n}{self._SCALARS[inner]}"))
            return [self._value(inner) for _ in range(n)]
        return self._unpack("<" + self._SCALARS[kind])[0]


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character table (bytes_to_unicode)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_backend(meta: dict[str, Any]) -> Backend:
    """GPT-2 style BPE over bytes, as transformers' GGUF converter builds it."""
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    # Some files store a few tokens as raw text; the BPE model needs every one byte-spelled.
    vocab = {
        (t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode())): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    rule = gguf_pre_rule(meta.get("tokenizer.ggml.pre"))
    backend = Backend(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            fuse_unk=False,
            byte_fallback=False,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            ignore_merges=rule.ignore_merges,
        )
    )
    backend.pre_tokenizer = _byte_level_pre_tokenizer(rule)
    backend.decoder = decoders.ByteLevel()
    _add_gguf_specials(backend, meta, alphabet)
    return backend


def _byte_level_pre_tokenizer(rule: PreTokenizerRule) -> pre_tokenizers.PreTokenizer:
    """The rule's expressions as isolated splits, then the bytes spelled GPT-2's way."""
    if rule.splits == (GPT2_SPLIT,):  # GPT-2's own expression: ByteLevel's built-in regex
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    steps: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(split), behavior="isolated") for split in rule.splits
    ]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def _sentencepiece_backend(meta: dict[str, Any]) -> Backend:
    """Llama-style sentencepiece BPE (byte fallback, ▁ for spaces), as transformers builds it."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = _merges_from_scores(
            vocab, dict(zip(tokens, meta["tokenizer.ggml.scores"], strict=True))
        )
    backend = Backend(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None)
    )
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    _add_gguf_specials(backend, meta, None)
    return backend


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Merges a sentencepiece vocabulary implies: every split of a token into two known pieces,
    ranked by the merged token's score (transformers' `generate_merges`)."""
    merges: list[tuple[str, str, float]] = []
    for piece, score in scores.items():
        local = [
            (piece[:i], piece[i:], score)
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab
        ]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _add_gguf_specials(backend: Backend, meta: dict[str, Any], alphabet: set[str] | None) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens, so
    both match whole in text. A byte-level 'control' token outside the byte alphabet is a
    llama.cpp mislabel and is skipped (as transformers does)."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, k in zip(tokens, types, strict=True)
        if k == CONTROL and (alphabet is None or set(t) <= alphabet)
    ]
    if control:
        backend.add_special_tokens(control)
    vocab = backend.get_vocab()
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, k in zip(tokens, types, strict=True)
        if k == USER_DEFINED and t in vocab
    ]
    if user:
        backend.add_tokens(user)


_GGUF_BUILDERS = {"gpt2": _byte_level_backend, "llama": _sentencepiece_backend}
