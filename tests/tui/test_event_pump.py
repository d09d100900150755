"""The event pump, without an app: token batching, order, closing, cancelling."""

from __future__ import annotations

from agent.events import KVStats, TokenDelta, TurnStarted
from tui.event_pump import pump_events
from tui.messages import AgentClosed, AgentEventReceived, TextStreamed


def run_pump(handle, **kwargs) -> list:
    posted: list = []
    pump_events(handle, posted.append, lambda: False, **kwargs)
    return posted


def test_deltas_are_joined_and_order_kept(make_handle):
    handle = make_handle(start=[])
    kv = KVStats(1, 0, 0, 256)
    handle.emit(TurnStarted(1, "p"), TokenDelta("a"), TokenDelta("b"), kv, TokenDelta("c"), kv)
    handle.close()  # the pump still drains what was emitted first
    posted = run_pump(handle, flush_s=10.0)  # only other events flush the text here
    kinds = [(type(m).__name__, getattr(m, "text", None)) for m in posted]
    assert kinds == [
        ("AgentEventReceived", None),
        ("TextStreamed", "ab"),
        ("AgentEventReceived", None),
        ("TextStreamed", "c"),
        ("AgentEventReceived", None),
        ("AgentClosed", None),
    ]
    assert all(m.source is handle for m in posted)
    assert isinstance(posted[0], AgentEventReceived) and isinstance(posted[-1], AgentClosed)


def test_a_long_stream_is_flushed_every_interval(make_handle):
    handle = make_handle(start=[])
    handle.emit(*(TokenDelta(str(i % 10)) for i in range(100)))
    handle.close()
    ticks = iter(range(1000))
    posted = run_pump(handle, clock=lambda: next(ticks) * 0.01, flush_s=0.1)
    texts = [m.text for m in posted if isinstance(m, TextStreamed)]
    assert "".join(texts) == "0123456789" * 10
    assert 5 <= len(texts) <= 30  # batched, not one message per token


def test_cancel_stops_an_idle_pump(make_handle):
    handle = make_handle(start=[])
    calls = iter([False, True])
    posted: list = []
    pump_events(handle, posted.append, lambda: next(calls))
    assert posted == []
