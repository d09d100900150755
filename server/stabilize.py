"""Prefix stabilisation: keep what clients change per request out of the cached prefix.

Clients put volatile text early in the prompt: Claude Code opens its system prompt with a
per-request billing header (`x-anthropic-billing-header: cc_version=...; cch=<nonce>;`),
others a date or a timestamp. Any change at position p throws away every cached page after
p, so such blocks are recognised and dropped (the billing header means nothing to the model)
or moved to the end of the prompt (a date the model may need). `PrefixTracker` then reports
where a request's tokens diverged from the closest earlier prompt, so what still breaks the
cache is logged and counted rather than silent.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_BILLING = re.compile(r"^\s*x-anthropic-billing-header:[^\n]*\n?", re.IGNORECASE | re.MULTILINE)
_VOLATILE_LINE = re.compile(
    r"^.*(?:\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?|"
    r"\b(?:today's date|current date|current time|the date today)\b).*$",
    re.IGNORECASE | re.MULTILINE)


@dataclass
class Stabilised:
    """What stabilisation changed in one request."""

    dropped: int = 0  # volatile blocks removed (billing headers)
    moved: int = 0  # volatile lines moved to the end of the prompt


def stabilise(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Stabilised]:
    """System messages without billing headers and with dated lines moved after the last
    message (as a trailing note in it); other messages are left as they are."""
    out, info, moved = [], Stabilised(), []
    for m in messages:
        if m["role"] != "system":
            out.append(m)
            continue
        text, n = _BILLING.subn("", m["content"])
        info.dropped += n
        lines = _VOLATILE_LINE.findall(text)
        if lines:
            text = _VOLATILE_LINE.sub("", text)
            moved += [line.strip() for line in lines]
        if text.strip():
            out.append({**m, "content": text.strip("\n")})
    if moved and out and out[-1]["role"] == "user":
        note = "\n".join(moved)
        out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{note}"}
        info.moved = len(moved)
    elif moved:  # nowhere later to put them: leave the prompt as it came
        return messages, Stabilised(dropped=info.dropped)
    return out, info


class PrefixTracker:
    """The last prompts served, to find where a new one leaves the closest of them."""

    def __init__(self, keep: int = 32):
        self._recent: deque[np.ndarray] = deque(maxlen=keep)

    def observe(self, ids: list[int]) -> tuple[int, int] | None:
        """(where the prompt diverges, the length of the earlier prompt it follows) when it
        changes an earlier prompt before that prompt's end; None when it only extends one."""
        new = np.asarray(ids, dtype=np.int64)
        best, best_len = -1, 0
        for old in self._recent:
            n = min(len(old), len(new))
            diff = np.flatnonzero(old[:n] != new[:n])
            common = int(diff[0]) if diff.size else n
            if common > best or (common == best and len(old) > best_len):
                best, best_len = common, len(old)
        self._recent.append(new)
        if best < 0 or best >= best_len or best == 0:
            return None
        return best, best_len
