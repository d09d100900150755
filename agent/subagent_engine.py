"""One engine, several conversations on threads of their own: `EngineHub`.

The engine is driven by one thread (it is not thread-safe). Sub-agents launched in one step
each run their loop on a thread; their conversations talk to a hub instead of the engine, and
the thread that launched them drives the hub: it runs their appends and truncations between
steps and admits every generation as an engine request, so one `Engine.step()` decodes a
token for each of them (several sequences per decode step, batched).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from runtime.engine.engine import Engine
from runtime.engine.postprocess import StreamEvent
from runtime.engine.sampling import SamplingParams
from runtime.engine.scheduler import Request
from runtime.engine.sequence import Sequence

log = logging.getLogger(__name__)

_END = object()  # a stream's last item


@dataclass(eq=False)
class _Generation:
    """One generation asked for through the hub; its events reach the asking thread."""

    seq: Sequence
    params: SamplingParams
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    request: Request | None = None


class EngineHub:
    """The engine calls a LocalConversation makes, from any thread; `drive` (on the thread
    that owns the engine) carries them out. Attributes the engine only holds (stop_ids,
    max_context, page_size) are read through."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._calls: list[tuple[Callable[[Engine], Any], Future]] = []
        self._waiting: list[_Generation] = []
        self._running: list[_Generation] = []
        self._cond = threading.Condition()
        self.max_rows = 0  # the most generations one step has decoded (for the tests)

    def __getattr__(self, name: str) -> Any:
        if name in ("stop_ids", "max_context", "page_size", "tokenizer", "kv"):
            return getattr(self._engine, name)
        raise AttributeError(name)

    # -- the engine's API, for the conversations' threads -----------------------------------

    def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run `fn(engine)` on the driving thread between steps; its result or exception."""
        future: Future = Future()
        with self._cond:
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result()

    def extend(self, seq: Sequence, ids: list[int], progress=None):
        return self.call(lambda e: e.extend(seq, ids, progress))

    def restore(self, seq: Sequence, ids: list[int]):
        return self.call(lambda e: e.restore(seq, ids))

    def truncate(self, seq: Sequence, n: int) -> None:
        return self.call(lambda e: e.truncate(seq, n))

    def release(self, seq: Sequence) -> None:
        return self.call(lambda e: e.release(seq))

    def fork(self, seq: Sequence) -> Sequence:
        return self.call(lambda e: e.fork(seq))

    def new_sequence(self) -> Sequence:
        return self._engine.new_sequence()  # touches no shared state

    def generate(self, seq: Sequence, params: SamplingParams) -> Iterator[StreamEvent]:
        """Stream one generation, decoded in the same steps as every other one running."""
        gen = _Generation(seq, params)
        with self._cond:
            self._waiting.append(gen)
            self._cond.notify()
        try:
            while (item := gen.events.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            gen.cancelled.set()  # closed early: the driver aborts the request
            self.wake()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- the driving thread -----------------------------------------------------------------

    def drive(self, done: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Serve calls and step generations until `done()` (checked between rounds)."""
        while not done():
            with self._cond:
                if not (self._calls or self._waiting or self._running):
                    self._cond.wait(poll_s)
                calls, self._calls = self._calls, []
                admitted, self._waiting = self._waiting, []
            for fn, future in calls:
                _run_call(fn, future, self._engine)
            for gen in admitted:
                self._admit(gen)
            self._drop_cancelled()
            if self._running:
                self._step()
        self._stop_all()

    def _admit(self, gen: _Generation) -> None:
        if gen.cancelled.is_set():
            gen.events.put(_END)
            return
        try:
            gen.request = self._engine.add_request(gen.seq, gen.params)
        except Exception as e:  # the asking thread raises it
            gen.events.put(e)
            return
        self._running.append(gen)

    def _step(self) -> None:
        self.max_rows = max(self.max_rows, len(self._engine.running))
        try:
            self._engine.step()
        except Exception as e:  # fail what runs; the loops turn it into their error
            log.warning("engine step failed", exc_info=True)
            for gen in list(self._running):
                self._end(gen, e)
            return
        for gen in list(self._running):
            req = gen.request
            for event in req.outbox:
                gen.events.put(event)
            req.outbox.clear()
            if req.finished:
                self._end(gen, req.error)

    def _drop_cancelled(self) -> None:
        for gen in [g for g in self._running if g.cancelled.is_set()]:
            self._end(gen)

    def _end(self, gen: _Generation, error: Exception | None = None) -> None:
        self._engine.abort(gen.request)
        self._running.remove(gen)
        gen.events.put(error if error is not None else _END)

    def _stop_all(self) -> None:
        """Nothing may be left running on the engine once the hub stops."""
        with self._cond:
            admitted, self._waiting = self._waiting, []
        for gen in admitted:
            gen.events.put(_END)
        for gen in list(self._running):
            self._end(gen)


def _run_call(fn: Callable[[Engine], Any], future: Future, engine: Engine) -> None:
    try:
        future.set_result(fn(engine))
    except BaseException as e:  # noqa: BLE001 - the calling thread re-raises it
        future.set_exception(e)
