"""The loop a worker thread runs: agent events in, app messages out.

Consecutive TokenDeltas are joined for up to `flush_s` seconds, so a model streaming hundreds
of tokens a second costs the UI about 30 messages a second, whatever the token rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.message import Message

from agent.events import TokenDelta
from agent.handle import AgentHandle
from tui.messages import AgentClosed, AgentEventReceived, TextStreamed

FLUSH_S = 1 / 30  # the longest a streamed token waits before it is shown
IDLE_WAIT_S = 0.1  # how often an idle pump looks at `cancelled` and `closed`


def pump_events(
    handle: AgentHandle,
    post: Callable[[Message], object],
    cancelled: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
    flush_s: float = FLUSH_S,
) -> None:
    """Post every event of `handle` until it closes (then AgentClosed) or `cancelled()`."""
    text: list[str] = []
    since = 0.0
    while not cancelled():
        wait = max(0.0, since + flush_s - clock()) if text else IDLE_WAIT_S
        event = handle.next_event(timeout=wait)
        if isinstance(event, TokenDelta):
            if not text:
                since = clock()
            text.append(event.text)
            if clock() - since < flush_s:
                continue
        if text:
            post(TextStreamed("".join(text), handle))
            text.clear()
        if event is None and handle.closed:
            post(AgentClosed(handle))
            return
        if event is not None and not isinstance(event, TokenDelta):
            post(AgentEventReceived(event, handle))
