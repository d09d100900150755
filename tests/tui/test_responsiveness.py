"""The UI stays responsive while the agent streams tokens as fast as it can."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from textual import events

from tui.widgets.assistant_message import AssistantMessage

pytestmark = pytest.mark.asyncio

BUDGET_S = 0.100
KEYS = "responsive"


async def test_keys_are_handled_within_100ms_while_streaming(
    make_app, make_handle, scripts, wait_for
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
    assert max(latencies) < BUDGET_S
