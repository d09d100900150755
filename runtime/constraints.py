"""Constrained decoding of Hermes tool calls with llguidance.

`tool_call_constraint` turns OpenAI-style function schemas into a `TokenConstraint` whose masks
only let the model write well-formed calls:

    <tool_call>
    {"name": "<tool>", "arguments": <JSON matching that tool's parameters>}
    </tool_call><end-of-turn>

With `required=True` the whole reply is exactly one such call and an end-of-turn token. With
`required=False` the reply is free text ended by an end-of-turn token, or free text followed by
calls (separated by whitespace, then the end token): once the text spells `<tool_call>`, the call
is held to the schemas. The grammar is a llguidance lark grammar (`tool_call_grammar`); each
tool's arguments are an inline `%json` sub-grammar, or, for parameters given as `x-line-edits`
(`line_edit_parameters`), a one-line replacement: a file, one of its lines, and a new line
that differs from it.

Costs: building llguidance's tokenizer walks the vocabulary (about 0.2 s for 49K tokens), so it
is built once per `Tokenizer` and cached; a compiled grammar is cached per tool set, so a turn
with the same tools pays a matcher copy (microseconds). A mask is computed per token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import llguidance
import numpy as np
import torch

from runtime.engine.constraint import TokenConstraint
from runtime.errors import UnsupportedModel
from runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

# Arguments are laid out as json.dumps writes them (and as the Hermes prompt shows): no free
# whitespace, so a small model cannot wander into endless blank lines inside a call; `\u00e9`
# escapes stay allowed, as json.dumps writes them for non-ASCII text. `lenient` ignores
# JSON-schema keywords llguidance does not implement instead of refusing the schema; the tool's
# own validation still runs on the parsed call. Properties come in the schema's order.
_JSON_OPTIONS = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allow_general_unicode_escapes": True,
    "lenient": True,
}

_TEXT = "TEXT: /(.|\\n)*/"  # any text (special tokens are never text)
# Words, not markup: no call nor the look of one (`<tool_call_2>`, `<tool_code>`), and no
# opening tag (`<file path=...>`: a small model echoing the repository snapshot's form).
_TEXT_NO_CALL = "TEXT: /(.|\\n)*/ & ~/(.|\\n)*<tool(.|\\n)*/ & ~/[ \\t\\n]*<(.|\\n)*/"
_GRAMMARS_PER_TOKENIZER = 8  # compiled tool sets kept per tokenizer (one per agent, usually)


class ToolCallConstraint(TokenConstraint):
    """Masks tokens so the output follows a tool-call grammar (see the module docstring).

    `finished()` turns True once the grammar is complete (after the end-of-turn token), or when
    the matcher fails: a token the grammar does not allow (the mask was bypassed) or an internal
    limit. A failure is logged, never raised, so the decode loop goes on and the agent's parser
    reports whatever malformed call was written.
    """

    def __init__(self, matcher: llguidance.LLMatcher, n_tokens: int, end_ids: Iterable[int]):
        self._matcher = matcher
        self._n_tokens = n_tokens  # the tokenizer's vocabulary; the model's may be larger
        self._end_ids = sorted(set(end_ids))
        self._done = False

    def allowed(self, vocab_size: int) -> torch.Tensor | None:
        """Bool mask `(vocab_size,)` on the CPU; ids past the tokenizer's vocabulary are False."""
        if self._done:
            return None
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        if self._matcher.is_error() or not bits.any():
            self._fail("no token can continue the tool call")
            return self._end_mask(vocab_size)
        return _unpack(bits, min(self._n_tokens, vocab_size), vocab_size)

    def advance(self, token: int) -> None:
        """Feed the sampled token to the matcher; a refused token ends the constraint."""
        if self._done:
            return
        if not 0 <= token < self._n_tokens or not self._matcher.consume_token(token):
            self._fail(f"token {token} does not fit the tool-call grammar")
        elif self._matcher.is_stopped():
            self._done = True

    def finished(self) -> bool:
        """True after the end-of-turn token, or once the matcher has failed."""
        return self._done

    def _fail(self, what: str) -> None:
        error = self._matcher.get_error().strip().splitlines()
        detail = error[0] if error else "no matcher error"
        log.warning(
            "tool-call constraint stopped: %s (%s); the output is left as generated", what, detail
        )
        self._done = True

    def _end_mask(self, vocab_size: int) -> torch.Tensor:
        """Only the end-of-turn tokens: a failed call still closes the turn cleanly."""
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[[i for i in self._end_ids if i < vocab_size]] = True
        return mask


def tool_call_constraint(
    tokenizer: Tokenizer, schemas: list[dict[str, Any]], required: bool, end_ids: Iterable[int]
) -> ToolCallConstraint:
    """A fresh constraint for one generation over `schemas` (OpenAI function schemas).

    `required`: the reply must be exactly one call; otherwise free text or text then calls.
    `end_ids`: the end-of-turn tokens that may close the reply (e.g. `<|im_end|>`).
    Raises ValueError for unusable schemas, UnsupportedModel when llguidance cannot read the
    tokenizer.
    """
    end_ids = sorted(set(end_ids))
    grammar = tool_call_grammar(tokenizer, schemas, required, end_ids)
    compiled = _compiled_for(tokenizer)
    return ToolCallConstraint(compiled.matcher(grammar), compiled.n_tokens, end_ids)


def text_only_constraint(tokenizer: Tokenizer, end_ids: Iterable[int]) -> ToolCallConstraint:
    """Free text that never opens a tool call (nor spells `<tool`) and does not start with a
    tag, then an end token: for replies that must answer in words."""
    end_ids = sorted(set(end_ids))
    if not end_ids:
        raise ValueError("a text-only constraint needs at least one end-of-turn token id")
    end = f"<[{','.join(map(str, end_ids))}]>"
    grammar = f"start: TEXT {end}\n{_TEXT_NO_CALL}\n"
    compiled = _compiled_for(tokenizer)
    return ToolCallConstraint(compiled.matcher(grammar), compiled.n_tokens, end_ids)


def tool_call_grammar(
    tokenizer: Tokenizer, schemas: list[dict[str, Any]], required: bool, end_ids: Iterable[int]
) -> str:
    """The llguidance lark grammar behind `tool_call_constraint` (exposed for tests and logs)."""
    ends = sorted(set(end_ids))
    if not ends:
        raise ValueError("a tool-call constraint needs at least one end-of-turn token id")
    if required and not schemas:
        raise ValueError("required tool call, but no tool schemas were given")
    markers = _Markers.of(tokenizer)
    end = f"<[{','.join(map(str, ends))}]>"
    body = f'"\\n" call "\\n" {markers.close}'  # what follows <tool_call>
    if required:
        head = [f"start: {markers.open} {body} {end}"]
    elif not schemas:
        head = [f"start: TEXT {end}", _TEXT]
    else:
        head = [
            f"start: TEXT {end} | {markers.text_then_open} {body} calls",
            f"calls: SEP? {end} | SEP? {markers.open} {body} calls",
            "SEP: /[ \\t\\r\\n]+/",
            _TEXT,
            *markers.rules,
        ]
    return "\n".join([*head, *_call_rules(schemas)]) + "\n"


@dataclass(frozen=True)
class _Markers:
    """How the grammar spells `<tool_call>` / `</tool_call>` for one tokenizer.

    As text they are string literals, and free text before a call is a lazy lexeme that ends at
    the first `<tool_call>` (so free text can never contain an unconstrained call). Where the
    vocabulary holds them as special tokens, text cannot spell them at all, and the grammar
    names the tokens instead.
    """

    open: str
    close: str
    text_then_open: str
    rules: tuple[str, ...] = ()

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> _Markers:
        if _is_special(tokenizer, CALL_OPEN):
            close = CALL_CLOSE if _is_special(tokenizer, CALL_CLOSE) else json.dumps(CALL_CLOSE)
            return cls(CALL_OPEN, close, f"TEXT {CALL_OPEN}")
        lazy = f"text_then_open[lazy]: TEXT {json.dumps(CALL_OPEN)}"
        return cls(json.dumps(CALL_OPEN), json.dumps(CALL_CLOSE), "text_then_open", (lazy,))


def _is_special(tokenizer: Tokenizer, text: str) -> bool:
    token_id = tokenizer.token_to_id(text)
    return token_id is not None and token_id in tokenizer.special_ids


def _call_rules(schemas: list[dict[str, Any]]) -> list[str]:
    """`call: call_0 | call_1 ...`, each a fixed `{"name": ..., "arguments": ` and its %json."""
    names = [_function(s)["name"] for s in schemas]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique; repeated: {', '.join(duplicates)}")
    rules = [f"call: {' | '.join(f'call_{i}' for i in range(len(schemas)))}"] if schemas else []
    for i, schema in enumerate(schemas):
        function = _function(schema)
        prefix = '{"name": ' + json.dumps(function["name"]) + ', "arguments": '
        rules.append(f'call_{i}: {json.dumps(prefix)} args_{i} "}}"')
        edits = (function.get("parameters") or {}).get(LINE_EDITS)
        if edits is not None:
            rules += _line_edit_rules(f"args_{i}", edits)
            continue
        parameters = {
            **(function.get("parameters") or {"type": "object"}),
            "x-guidance": _JSON_OPTIONS,
        }
        rules.append(f"args_{i}: %json {json.dumps(parameters)}")
    return rules


LINE_EDITS = "x-line-edits"
_MAX_LINE = 200  # characters of a replacement line (a small model can run on forever)
_JSON_CHAR = r'([^"\\\x00-\x1f]|\\["\\\x2fbft]|\\u[0-9a-fA-F]{4})'  # no \n: one line


@dataclass(frozen=True)
class LineEdit:
    """One line a call may replace: `old` is the exact text replaced, `keep` the start of the
    replacement written as it is (e.g. context replaced along with the line), and the new
    line may be none of `avoid` (the line itself; a small model also copies its neighbours).
    With `choices`, the new line is one of them (those not avoided; free text once none is
    left): a weak model picks among likely repairs better than it writes one."""

    old: str
    keep: str
    avoid: tuple[str, ...]
    choices: tuple[str, ...] = ()


def line_edit_parameters(files: dict[str, list[LineEdit]], keys: tuple[str, str, str]
                         ) -> dict[str, Any]:
    """Parameters for a call that replaces one line: `{keys[0]: a file, keys[1]: one of its
    LineEdit.old, keys[2]: LineEdit.keep then one new line}`."""
    if not files or not all(files.values()):
        raise ValueError("a line edit needs at least one file with at least one line")
    spec = {path: [dataclasses.asdict(e) for e in edits] for path, edits in files.items()}
    return {LINE_EDITS: {"keys": list(keys), "files": spec}}


def _line_edit_rules(name: str, spec: dict[str, Any]) -> list[str]:
    """`name: file_0 | file_1 ...`, each file's lines, each line's differing replacement."""
    path_key, old_key, new_key = spec["keys"]
    rules, files = [], []
    for f, (path, edits) in enumerate(spec["files"].items()):
        head = "{" + f"{json.dumps(path_key)}: {json.dumps(path)}, {json.dumps(old_key)}: "
        files.append(f"{name}_{f}")
        options = []
        for k, edit in enumerate(edits):
            lexeme = f"{name.upper()}_{f}_{k}"
            fixed = f'{json.dumps(edit["old"])}, {json.dumps(new_key)}: "'
            fixed += json.dumps(edit["keep"])[1:-1]
            options.append(f'{json.dumps(fixed)} {lexeme} "\\""')
            choices = [c for c in edit.get("choices", ()) if c not in edit["avoid"]]
            if choices:
                alternatives = "|".join(_regex_literal(json.dumps(c)[1:-1]) for c in choices)
                rules.append(f"{lexeme}: /({alternatives})/")
                continue
            avoid = "|".join(_regex_literal(json.dumps(a)[1:-1]) for a in edit["avoid"])
            most = min(_MAX_LINE, 2 * len(edit["old"]) + 40)  # a fix, not a new program
            rules.append(f"{lexeme}: /({_JSON_CHAR}){{0,{most}}}/ & ~/({avoid})/")
        rules.append(f"{name}_{f}: {json.dumps(head)} ({' | '.join(options)}) " + '"}"')
    rules.insert(0, f"{name}: {' | '.join(files)}")
    return rules


def _regex_literal(text: str) -> str:
    """`text` as a lark regex body that matches exactly it."""
    return "".join(c if c.isascii() and (c.isalnum() or c in " _") else f"\\x{{{ord(c):x}}}"
                   for c in text)


def _function(schema: dict[str, Any]) -> dict[str, Any]:
    function = schema.get("function", schema) if isinstance(schema, dict) else None
    if (
        not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
        or not function["name"]
    ):
        raise ValueError(f"not an OpenAI function schema (needs function.name): {schema!r:.200}")
    return function


def _unpack(bits: np.ndarray, n_tokens: int, vocab_size: int) -> torch.Tensor:
    """llguidance's bitmask (bit i of the little-endian words = token i) as a bool tensor."""
    mask = np.zeros(vocab_size, dtype=np.uint8)
    mask[:n_tokens] = np.unpackbits(bits, count=n_tokens, bitorder="little")
    return torch.from_numpy(mask).view(torch.bool)


# --- per-tokenizer cache ------------------------------------------------------------------------


@dataclass
class _Compiled:
    """llguidance's view of one tokenizer, and pristine matchers for recent grammars."""

    tokenizer: llguidance.LLTokenizer
    n_tokens: int
    matchers: OrderedDict[str, llguidance.LLMatcher] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher for `grammar`: a copy of the cached one (compiling it once)."""
        with self.lock:
            pristine = self.matchers.get(grammar)
            if pristine is None:
                pristine = self._compile(grammar)
                self.matchers[grammar] = pristine
                while len(self.matchers) > _GRAMMARS_PER_TOKENIZER:
                    self.matchers.popitem(last=False)
            self.matchers.move_to_end(grammar)
            return pristine.deep_copy()

    def _compile(self, grammar: str) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(
            self.tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
        )
        if matcher.is_error():
            first = matcher.get_error().strip().splitlines()[0]
            raise ValueError(f"the tool schemas do not compile to a grammar: {first}")
        for warning in matcher.get_grammar_warnings():
            log.warning("tool-call grammar: %s", warning)
        return matcher


# Keyed by the Tokenizer object itself: it goes away with its model, and two models with the
# same vocabulary still cost one build each (0.2 s), which is not worth a content hash.
_CACHE: weakref.WeakKeyDictionary[Tokenizer, _Compiled] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def prepare(tokenizer: Tokenizer) -> threading.Thread:
    """Build the grammar engine's view of `tokenizer` on a background thread, so the first
    constrained generation finds it ready (0.7 s for SmolLM2's vocabulary, more for 150K;
    llguidance holds the GIL while it builds, so start it beside I/O such as a weights load).
    A failure is left for that first generation to raise."""

    def build() -> None:
        try:
            _compiled_for(tokenizer)
        except Exception:  # noqa: BLE001 - raised again, with its message, where it is used
            log.debug("preparing the grammar tokenizer failed", exc_info=True)

    thread = threading.Thread(target=build, name="grammar-tokenizer", daemon=True)
    thread.start()
    return thread


def _compiled_for(tokenizer: Tokenizer) -> _Compiled:
    with _CACHE_LOCK:
        compiled = _CACHE.get(tokenizer)
        if compiled is None:
            compiled = _Compiled(_ll_tokenizer(tokenizer), tokenizer.vocab_size)
            _CACHE[tokenizer] = compiled
        return compiled


def _ll_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    eos = sorted(tokenizer.eos_ids) or None
    try:
        return llguidance.LLTokenizer(
            tokenizer.backend.to_str(), n_vocab=tokenizer.vocab_size, eos_token=eos
        )
    except Exception as e:  # llguidance raises plain exceptions for tokenizers it cannot read
        raise UnsupportedModel(
            f"llguidance cannot read this tokenizer ({e}); generate without a tool-call constraint"
        ) from e
