"""How a byte-level BPE GGUF splits text before merging: llama.cpp's `tokenizer.ggml.pre` table.

llama.cpp (src/llama-vocab.cpp, `llm_tokenizer_bpe`) maps each pre-tokenizer name to a list of
regular expressions applied one after another: every piece the previous expression left (matched
or not) is split again by the next one. A `tokenizers` Sequence of `Split(..., "isolated")` steps
does exactly that. Where llama.cpp rewrote a model's expression for std::regex (`(?i:...)`
spelled `'[sS]`, `\\p{Lu}` classes spelled with look-aheads), the model's own expression from
its tokenizer.json is used: it is what the model was trained with and Oniguruma reads it.

`ignore_merges` is llama.cpp's flag (and tokenizer.json's): a whole piece that is a vocabulary
entry becomes that token without running the merges.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import UnsupportedModel

# The expressions, named by the first model family that used them.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_JAIS2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)"
    r"|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"
)
_QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_WORDS = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
)
_GPT4O = _GPT4O_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GRANITE_MULTI = _GPT4O  # the original expression; llama.cpp only adds \p{M} to its rewrite
_CHATGLM4 = _LLAMA3
_CJK = "[一-龥぀-ゟ゠-ヿ]+"
_DEEPSEEK3_WORDS = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPARK_WORDS = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"
)
_DEEPSEEK_LLM_LETTERS = (  # escaped: these Greek letters change under NFC
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0"
    "-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145"
    "-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640"
    "-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+"
)
_YOUTU = (
    r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
    _GPT4O_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_NOT_HAN_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_NOT_HAN_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
_KIMI_K2 = (
    rf"[\p{{Han}}]+|[^\r\n\p{{L}}\p{{N}}]?{_NOT_HAN_UPPER}*{_NOT_HAN_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_NOT_HAN_UPPER}+{_NOT_HAN_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_BY_THREE = r"\d{1,3}(?=(?:\d{3})*\b)"  # 1234567 -> 1 234 567
_AFMOE_CJK = "[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+"


@dataclass(frozen=True)
class PreTokenizerRule:
    """The split expressions of one llama.cpp pre-tokenizer type, applied in order."""

    splits: tuple[str, ...]
    ignore_merges: bool = False


_DEFAULT = PreTokenizerRule(
    (r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]")
)
_STARCODER = PreTokenizerRule((r"\p{N}", GPT2_SPLIT))  # digits one by one, then GPT-2's expression
_GPT2_RULE = PreTokenizerRule((GPT2_SPLIT,))
_QWEN2_RULE = PreTokenizerRule((_QWEN2,))
_LLAMA3_RULE = PreTokenizerRule((_LLAMA3,), ignore_merges=True)
_DEEPSEEK3 = PreTokenizerRule((r"\p{N}{1,3}", _CJK, _DEEPSEEK3_WORDS))
_GPT4O_RULE = PreTokenizerRule((_GPT4O,))


def _names(rule: PreTokenizerRule, *names: str) -> dict[str, PreTokenizerRule]:
    return dict.fromkeys(names, rule)


# Every name llama.cpp accepts for a byte-level BPE vocabulary (llama_vocab::impl::load).
GGUF_PRE_RULES: dict[str, PreTokenizerRule] = {
    "default": _DEFAULT,
    **_names(
        _LLAMA3_RULE,
        "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
        "lfm2", "jina-v5-nano",
    ),
    **_names(PreTokenizerRule((_LLAMA3,)), "dbrx", "smaug-bpe"),
    "jais-2": PreTokenizerRule((_JAIS2,)),
    "deepseek-llm": PreTokenizerRule(
        ("[\r\n]", _DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$",
         "[一-龥ࠀ-一가-퟿]+", r"\p{N}+")
    ),
    "deepseek-coder": PreTokenizerRule(
        ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}")
    ),
    **_names(_DEEPSEEK3, "deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
    "spark2_5": PreTokenizerRule((r"\p{N}{1,3}", _CJK, _SPARK_WORDS, r"\p{N}")),
    "youtu": PreTokenizerRule(_YOUTU, ignore_merges=True),
    "falcon": PreTokenizerRule((r"[\p{P}\$\+<=>\^~\|`]+", GPT2_SPLIT, "[0-9][0-9][0-9]")),
    **_names(
        _STARCODER,
        "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
        "mellum2",
    ),
    **_names(
        _GPT2_RULE,
        "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
        "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt",
        "olmo", "jais", "exaone4", "trillion", "granite-docling",
    ),
    **_names(
        _QWEN2_RULE,
        "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
        "solar-open",
    ),
    "qwen35": PreTokenizerRule((_QWEN35,)),
    **_names(PreTokenizerRule((r" ?[^(\s|.,!?…。，、।۔،)]+",)), "poro-chat", "bloom",
             "gpt3-finnish"),
    "viking": PreTokenizerRule((r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}")),
    "chatglm-bpe": PreTokenizerRule((_CHATGLM4,)),
    **_names(PreTokenizerRule((_CHATGLM4,), ignore_merges=True), "glm4", "glm5"),
    "tekken": PreTokenizerRule((_TEKKEN,), ignore_merges=True),
    "chameleon": PreTokenizerRule(
        ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )",
         r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2_SPLIT)
    ),
    **_names(_GPT4O_RULE, "gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
    "granite-embed-multi-97m": PreTokenizerRule((_GRANITE_MULTI,), ignore_merges=True),
    **_names(PreTokenizerRule((_DIGITS_BY_THREE, _GPT4O)), "tiny_aya", "cohere2moe"),
    "kimi-k2": PreTokenizerRule((_KIMI_K2,)),
    "superbpe": PreTokenizerRule((r"\p{N}+", r"(?=(\d{3})+(?!\d))")),
    **_names(
        PreTokenizerRule(
            (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]|\s+(?!\S)|\s+",)
        ),
        "bailingmoe", "bailingmoe2", "llada-moe",
    ),
    "seed-coder": PreTokenizerRule(
        (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+",)
    ),
    "ufakzeka": PreTokenizerRule(
        (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",)
    ),
    "grok-2": _QWEN2_RULE,
    "afmoe": PreTokenizerRule((_DIGITS_BY_THREE, _AFMOE_CJK, _DEEPSEEK3_WORDS)),
    "laguna": PreTokenizerRule(("[^\\n]+|[\\n]+", _QWEN2)),
    "exaone-moe": PreTokenizerRule(
        (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",)
    ),
    "minicpm5": PreTokenizerRule(
        (r"\p{N}{1,3}",
         _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ignore_merges=True,
    ),
}

# Names llama.cpp knows whose vocabulary is not GPT-2 byte-spelled (BPE over raw UTF-8 with
# spaces as U+2581, or whitespace-split): a different model than the byte-level one.
NOT_BYTE_LEVEL = frozenset(
    {"gemma4", "granite-embed-multi-311m", "mmbert", "sarvam-moe", "whitespace"}
)


def gguf_pre_rule(name: str | None) -> PreTokenizerRule:
    """The rule for a file's `tokenizer.ggml.pre`. Files without one predate the key and were
    converted from GPT-2 style tokenizers: GPT-2's expression, as transformers reads them
    (llama.cpp's 'default' is its own approximation and warns that quality degrades)."""
    if not name:
        return _GPT2_RULE
    rule = GGUF_PRE_RULES.get(name)
    if rule is not None:
        return rule
    if name in NOT_BYTE_LEVEL:
        raise UnsupportedModel(
            f"GGUF pre-tokenizer {name!r} is BPE over raw UTF-8, which is not supported yet; "
            "use the model's Hugging Face folder"
        )
    raise UnsupportedModel(
        f"unknown GGUF pre-tokenizer {name!r} (llama.cpp rejects it too); "
        "use the model's Hugging Face folder"
    )
