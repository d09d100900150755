"""Short human forms of numbers, durations and tool arguments, shared by the widgets."""

from __future__ import annotations

import json
from typing import Any

# The argument that best says what a call does, per tool; others fall back to `k=v` pairs.
_MAIN_ARG = {
    "shell": "command",
    "read": "path",
    "edit": "path",
    "write": "path",
    "grep": "pattern",
    "glob": "pattern",
    "git": "args",
}


def tokens(n: int | float) -> str:
    """1234 -> '1.2K', 3_400_000 -> '3.4M'; small numbers stay exact."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    """Seconds as m:ss or h:mm:ss."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def percent(part: int, whole: int) -> str:
    """'39%', or '' when the whole is unknown."""
    return f"{100 * part / whole:.0f}%" if whole > 0 else ""


def clip(text: str, width: int) -> str:
    """First line of `text`, cut to `width` characters with an ellipsis."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) > width or "\n" in text.strip():
        return line[: max(0, width - 1)] + "…"
    return line


def args_summary(name: str, args: dict[str, Any], width: int = 60) -> str:
    """One line saying what a tool call does, e.g. `git status` for shell."""
    key = _MAIN_ARG.get(name)
    if key and key in args:
        value = args[key]
        text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        return clip(text, width)
    pairs = ", ".join(f"{k}={_short_value(v)}" for k, v in args.items())
    return clip(pairs, width)


def _short_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 24 else value[:23] + "…")
    return json.dumps(value, default=str)[:24]


def pretty_args(args: dict[str, Any]) -> str:
    """Arguments as indented JSON, for the approval dialog."""
    return json.dumps(args, indent=2, ensure_ascii=False, default=str)
