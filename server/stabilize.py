"""Prefix stabilisation: keep what clients change per request out of the cached prefix.

Clients put volatile text early in the prompt: Claude Code opens its system prompt with a
per-request billing header (`x-anthropic-billing-header: cc_version=...; cch=<nonce>;`),
others a date or a timestamp. Any change at position p throws away every cached page after
p, so such blocks are recognised and dropped (the billing header means nothing to the model)
or moved after the system prompt, to the end of the first user message (a date the model
may need): the system prompt and tools, the longest shared part, stay cached across
conversations, and the first user message is as stable as the conversation itself.
`PrefixTracker` then reports where a request's tokens diverged from the closest earlier
prompt, so what still breaks the cache is logged and counted rather than silent.
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
    """System messages without billing headers, their dated lines moved to the end of the
    first user message; other messages are left as they are."""
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
    if not moved:
        return out, info
    first = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
    if first is None:  # nowhere later to put them: leave the prompt as it came
        return messages, Stabilised(dropped=info.dropped)
    note = "\n".join(moved)
    out[first] = {**out[first], "content": f"{out[first]['content']}\n\n{note}"}
    info.moved = len(moved)
    return out, info


class PrefixTracker:
    """The last prompts served, to find where a new one leaves the closest of them."""

    def __init__(self, keep: int = 32, max_tokens: int = 4 << 20):
        self._recent: deque[np.ndarray] = deque(maxlen=keep)
        self._max_tokens = max_tokens  # 16 MiB of int32 at most, whatever the prompts' size

    def observe(self, ids: list[int]) -> tuple[int, int] | None:
        """(where the prompt diverges, the length of the earlier prompt it follows) when it
        changes an earlier prompt before that prompt's end; None when it only extends one."""
        new = np.asarray(ids, dtype=np.int32)
        best, best_len = -1, 0
        for old in self._recent:
            n = min(len(old), len(new))
            diff = np.flatnonzero(old[:n] != new[:n])
            common = int(diff[0]) if diff.size else n
            if common > best or (common == best and len(old) > best_len):
                best, best_len = common, len(old)
        self._recent.append(new)
        while sum(len(a) for a in self._recent) > self._max_tokens and len(self._recent) > 1:
            self._recent.popleft()
        if best < 0 or best >= best_len or best == 0:
            return None
        return best, best_len
