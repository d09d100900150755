"""Small, plausible repairs of one line of code: what a weak model chooses among.

A 135M model asked to rewrite `return sum(values) / (len(values) - 1)` writes something else
broken. Offered instead a short list of the edits that fix most one-line bugs, it ranks them
well, and the tests (run after each edit) decide. The edits, each applied at one place:
- an operator swapped for its usual confusion (`+`/`-`, `*`/`/`, `/`/`//`, `<`/`<=`, `==`/`!=`,
  `and`/`or`, ...);
- an off-by-one removed (` - 1`, ` + 1`) or added to a call's result or a name;
- a negation removed (`not x` -> `x`);
- the parentheses an edit left around a single call or name dropped.

Strings and comments are left alone; the line's own text is never a candidate.
"""

from __future__ import annotations

import re

MAX_CANDIDATES = 24

# Each operator with the ones it is usually confused with (longest spellings first, so `<=`
# is never read as `<`).
_SWAPS: dict[str, tuple[str, ...]] = {
    "//": ("/",), "**": ("*",), "<=": ("<",), ">=": (">",), "==": ("!=",), "!=": ("==",),
    "+": ("-",), "-": ("+",), "*": ("/",), "/": ("*", "//"), "<": ("<=", ">"), ">": (">=", "<"),
    "and": ("or",), "or": ("and",), "is not": ("is",), "not in": ("in",),
}
_OPERATOR = re.compile(r"\bis not\b|\bnot in\b|\band\b|\bor\b|//|\*\*|<=|>=|==|!=|[-+*/<>]")
_OFF_BY_ONE = re.compile(r"\s*[-+]\s*1\b(?!\.)")
_NOT = re.compile(r"\bnot\s+")
_LONE_PARENS = re.compile(r"(?<![\w)\]])\(\s*([\w.]+(?:\([^()]*\))?)\s*\)")
_CALL_OR_NAME = re.compile(r"\b[a-zA-Z_][\w.]*(?:\([^()]*\))?")
_KEYWORDS = {"return", "if", "elif", "while", "for", "in", "not", "and", "or", "is", "def",
             "lambda", "else", "assert", "yield", "import", "from", "as", "None", "True",
             "False", "pass", "raise", "del", "global", "nonlocal", "with", "class", "await"}
_STRING_OR_COMMENT = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|#.*$")


def repairs(line: str) -> list[str]:
    """Distinct one-place repairs of `line` (stripped), most likely fixes first, at most
    MAX_CANDIDATES; empty for a line with nothing to repair."""
    code = line.strip()
    masked = _mask(code)
    out: list[str] = []
    for candidate in (*_drop_off_by_one(code, masked), *_swap_operators(code, masked),
                      *_drop_not(code, masked), *_add_off_by_one(code, masked)):
        candidate = _tidy(candidate)
        if candidate != code and candidate not in out and candidate.strip():
            out.append(candidate)
    return out[:MAX_CANDIDATES]


def _mask(code: str) -> str:
    """`code` with strings and comments blanked (same length), so nothing matches inside."""
    return _STRING_OR_COMMENT.sub(lambda m: " " * len(m.group()), code)


def _drop_off_by_one(code: str, masked: str) -> list[str]:
    return [code[:m.start()] + code[m.end():] for m in _OFF_BY_ONE.finditer(masked)]


def _swap_operators(code: str, masked: str) -> list[str]:
    out = []
    for m in _OPERATOR.finditer(masked):
        op = m.group()
        if op in "+-" and _unary(masked, m.start()):
            continue
        if op in "*" and masked[m.start() - 1:m.start()] in ("(", ",", ""):
            continue  # *args
        for other in _SWAPS.get(op, ()):
            out.append(code[:m.start()] + other + code[m.end():])
    return out


def _drop_not(code: str, masked: str) -> list[str]:
    return [code[:m.start()] + code[m.end():] for m in _NOT.finditer(masked)
            if not masked[m.end():].startswith("in ")]


def _add_off_by_one(code: str, masked: str) -> list[str]:
    """` - 1` / ` + 1` after the last call or name of an expression (`len(x)` -> `len(x) - 1`)."""
    out = []
    for m in _CALL_OR_NAME.finditer(masked):
        if m.group().split("(")[0] in _KEYWORDS or masked[m.end():].lstrip().startswith(("(", "=")):
            continue
        if "(" not in m.group() or _OFF_BY_ONE.match(masked, m.end()):
            continue  # a call's result only (a name gives too many guesses), not twice
        for delta in (" - 1", " + 1"):
            out.append(code[:m.end()] + delta + code[m.end():])
    return out


def _tidy(candidate: str) -> str:
    """Drop the parentheses an edit left around one call or name: `x / (len(v))` ->
    `x / len(v)`."""
    return _LONE_PARENS.sub(lambda m: m.group(1), candidate)


def _unary(masked: str, at: int) -> bool:
    before = masked[:at].rstrip()
    return not before or before[-1] in "([{,=:" or before.endswith(("return", "lambda"))
