"""BackgroundWriter: file writes that run on one background thread, so the caller never waits
for the disk; `flush` waits for what was submitted, `close` also stops the thread."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWriter:
    """One thread draining submitted writes in order; results are the writes' own business
    (they log their failures), so nothing is raised back to the submitter."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: list[Future] = []

    def submit(self, write: Callable[..., object], *args: object) -> None:
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(write, *args))

    def flush(self) -> None:
        for f in self._pending:
            f.result()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)
