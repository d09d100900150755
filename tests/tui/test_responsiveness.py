"""The UI stays responsive while the agent streams tokens as fast as it can."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
from textual import events

from tui.widgets.assistant_message import AssistantMessage

pytestmark = pytest.mark.asyncio

BUDGET_S = 0.100
# One key of the ten may wait longer (but never half a second): on the 2-core CI machine the
# stream thread, the app and the OS share two cores, and a single scheduling hiccup of a few
# hundred ms was seen once in many runs.
OUTLIER_S = 0.500
KEYS = "responsive"


@pytest.fixture
def own_heap():
    """The app's own heap, not the whole test session's: a full collection of everything the
    earlier tests left behind would otherwise be measured as key latency."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


async def test_keys_are_handled_within_100ms_while_streaming(
    make_app, make_handle, scripts, wait_for, own_heap
):
    handle = make_handle(script=scripts["held"])
    app = make_app(handle)
    stop = threading.Event()
    async with app.run_test(size=(100, 40)) as pilot:
        app.main.prompt.load_text("stream")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.main.query(AssistantMessage))
        message = app.main.query_one(AssistantMessage)
        handle.stream_forever(stop)  # ~2000 tokens/s from the handle's own thread
        await asyncio.sleep(0.5)
        streamed_before = len(message.source)
        latencies = []
        for key in KEYS:
            expected = app.main.prompt.text + key
            start = time.perf_counter()
            # What the terminal driver does with a key press; the pilot would wait for idle.
            app.post_message(events.Key(key, key))
            while app.main.prompt.text != expected:
                await asyncio.sleep(0.001)
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.03)  # typing speed
        stop.set()
        streamed = len(message.source) - streamed_before
    ms = sorted(round(s * 1000, 1) for s in latencies)
    print(
        f"key latency while streaming: median {ms[len(ms) // 2]} ms, max {ms[-1]} ms, "
        f"{streamed} characters streamed meanwhile"
    )
    assert streamed > 1000, "the stream must keep flowing while keys are measured"
    assert sorted(latencies)[-2] < BUDGET_S, ms
    assert max(latencies) < OUTLIER_S, ms
