"""A resident server over the embedded default model, on a free loopback port and a Unix
socket in a temporary directory, running in a background thread for a test module."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.local_model import LocalModel, RuntimeOptions
from server.resident import ResidentServer, ServeOptions


@dataclass
class Running:
    server: ResidentServer
    url: str
    socket: Path
    loop: asyncio.AbstractEventLoop

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)


def start_server(model: LocalModel, socket: Path, **options) -> Running:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = ResidentServer(model, ServeOptions(socket=socket, port=0, **options))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    return Running(server, f"http://127.0.0.1:{server.port}", socket, loop)


def open_model(gguf: Path, cache: Path, **options) -> LocalModel:
    return LocalModel.open(str(gguf), RuntimeOptions(device="cpu", page_size=16,
                                                     cache_dir=cache, **options))


@pytest.fixture(scope="module")
def served(smollm2_gguf, tmp_path_factory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("served")
    model = open_model(smollm2_gguf, tmp / "cache")
    running = start_server(model, tmp / "run" / "agent.sock", max_running=4, max_waiting=8)
    yield running
    running.stop()
