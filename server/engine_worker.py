"""The one thread that drives the engine: admits jobs, steps, hands events to the requests.

Every request of every client becomes a Job; the worker admits at most `max_running` into
the engine (more wait, at most `max_waiting`; past that `submit` raises Busy, a 429), and
each `Engine.step()` advances all admitted ones together. Events go back to the asyncio side
through `loop.call_soon_threadsafe`, so a slow reader never stalls the engine: its events
wait in its own queue. A cancelled job (a client that went away) is aborted at the next step
and its pages go back to the cache. Work other than generation (a resident session's append
or truncate) runs on this thread too, between steps, through `call`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from runtime.engine.engine import Engine
from runtime.engine.sampling import SamplingParams
from runtime.engine.scheduler import Request
from runtime.engine.sequence import Sequence
from runtime.errors import RuntimeError_

log = logging.getLogger(__name__)


class Busy(Exception):
    """Too many requests are waiting; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Closed(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class Usage:
    """What one job cost: prompt tokens (served from cache by tier, or computed), output."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    cached_by_tier: dict[str, int] = field(default_factory=dict)
    completion_tokens: int = 0
    ttft_s: float = 0.0
    seconds: float = 0.0


@dataclass(eq=False)
class Job:
    """One generation: prompt ids in; ("token", StreamEvent), then ("done", finish_reason)
    or ("error", exception) out on `events`. `session`: a resident session whose sequence
    the ids are appended to (and which keeps it afterwards)."""

    ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    session: str | None = None
    usage: Usage = field(default_factory=Usage)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    request: Request | None = None

    def emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class EngineWorker:
    """Owns the engine on one thread (see the module docstring)."""

    def __init__(self, engine: Engine, max_running: int = 16, max_waiting: int = 64,
                 max_sessions: int = 64):
        self.engine = engine
        self.max_running, self.max_waiting = max_running, max_waiting
        self.max_sessions = max_sessions
        self.sessions: dict[str, Sequence] = {}  # resident sessions, least recently used first
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._calls: deque[tuple[Callable[[Engine], Any], Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.on_finish: Callable[[Job], None] = lambda job: None
        self.last_active = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running and waiting, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def idle_s(self) -> float:
        """Seconds since the last request came or ended (0 while any runs)."""
        if self._running or self._waiting:
            return 0.0
        return time.monotonic() - self.last_active

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) jobs."""
        return len(self._running), len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queue a job; Busy when the waiting queue is full, Closed when stopping."""
        with self._cond:
            if self._stopping:
                raise Closed("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._running)} requests running and {len(self._waiting)} "
                           "waiting", retry_after=max(1, len(self._waiting) // 8))
            self._waiting.append(job)
            self.last_active = time.monotonic()
            self._cond.notify()

    def call(self, fn: Callable[[Engine], Any]) -> Future:
        """Run `fn(engine)` on the engine thread between steps."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise Closed("the server is shutting down")
            self._calls.append((fn, future))
            self.last_active = time.monotonic()
            self._cond.notify()
        return future

    def wake(self) -> None:
        """Look at cancellations now (a client went away)."""
        with self._cond:
            self._cond.notify()

    # -- the thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._calls or self._waiting or self._running or self._stopping):
                    self._cond.wait()
                if self._stopping and not (self._calls or self._waiting or self._running):
                    return
                calls = list(self._calls)
                self._calls.clear()
                admitted = []
                while self._waiting and len(self._running) + len(admitted) < self.max_running:
                    admitted.append(self._waiting.popleft())
            for fn, future in calls:
                _run_call(fn, future, self.engine)
            for job in admitted:
                self._admit(job)
            self._drop_cancelled()
            if self.engine.has_work:
                self._step()

    def _admit(self, job: Job) -> None:
        if job.cancelled.is_set():
            return job.emit("done", "cancelled")
        try:
            seq = self._sequence(job)
            before = len(seq.tokens)
            result = self.engine.restore(seq, job.ids)
            job.usage.prompt_tokens = len(seq.tokens)
            job.usage.cached_tokens = result.cached_tokens + (before if job.session else 0)
            job.usage.cached_by_tier = result.cached_by_tier
            job.request = self.engine.add_request(seq, job.params)
        except (RuntimeError_, AssertionError, ValueError) as e:
            self._end(job, error=e)
            return
        self._running.append(job)

    def _sequence(self, job: Job) -> Sequence:
        return self.engine.new_sequence() if job.session is None else self.session(job.session)

    def session(self, sid: str) -> Sequence:
        """The resident session's sequence, created if new (engine thread only). Past
        `max_sessions`, the least recently used idle session is released (its sealed pages
        stay cached, so a client that comes back restores it from the tiers)."""
        seq = self.sessions.pop(sid, None)
        self.sessions[sid] = seq = seq if seq is not None else self.engine.new_sequence()
        busy = {j.session for j in self._running}
        idle = [k for k in self.sessions if k not in busy and k != sid]
        for old in idle[: max(0, len(self.sessions) - self.max_sessions)]:
            self.engine.release(self.sessions.pop(old))
        return seq

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception as e:  # a bug or a device error: fail what runs, keep serving
            log.exception("engine step failed")
            for job in list(self._running):
                self.engine.abort(job.request)
                self._end(job, error=e)
            return
        now = time.perf_counter()
        for job in list(self._running):
            req = job.request
            for event in req.outbox:
                if not job.usage.ttft_s:
                    job.usage.ttft_s = now - job.submitted
                job.emit("token", event)
            req.outbox.clear()
            if req.finished:
                self._end(job)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._running if j.cancelled.is_set()]:
            self.engine.abort(job.request)
            self._end(job)

    def _end(self, job: Job, error: Exception | None = None) -> None:
        if job in self._running:
            self._running.remove(job)
        req = job.request
        if req is not None:
            job.usage.completion_tokens = len(req.generated)
            error = error or req.error
            if job.session is None:
                self.engine.release(req.seq)  # sealed pages stay cached for the next request
        job.usage.seconds = time.perf_counter() - job.submitted
        self.last_active = time.monotonic()
        self.on_finish(job)
        if error is not None:
            job.emit("error", error)
        else:
            job.emit("done", req.finish_reason if req else "stop")


def _run_call(fn: Callable[[Engine], Any], future: Future, engine: Engine) -> None:
    try:
        future.set_result(fn(engine))
    except Exception as e:
        future.set_exception(e)
