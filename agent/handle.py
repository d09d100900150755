"""The one interface between the agent core and any front end."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod

from agent.events import Event, Op


class AgentHandle(ABC):
    """A running agent session, driven by ops and observed through events.

    Contract: `submit` never blocks on model or tool work (it enqueues); `next_event` blocks up
    to `timeout` seconds and returns None if nothing happened; events of one session arrive in
    order. After `Shutdown` is processed the handle emits no more events and `closed` is True.
    Front ends must call `next_event` off their UI loop (a worker thread).
    """

    @abstractmethod
    def submit(self, op: Op) -> None:
        """Enqueue an op (user input, approval, interrupt, shutdown)."""

    @abstractmethod
    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once the session has shut down."""


class QueuedHandle(AgentHandle):
    """The usual plumbing: ops and events in thread-safe queues, `closed` as an Event.

    Subclasses run a worker that takes ops from `_ops`, puts events on `_events` and sets
    `_closed` when it ends."""

    def __init__(self) -> None:
        self._ops: queue.Queue[Op] = queue.Queue()
        self._events: queue.Queue[Event] = queue.Queue()
        self._closed = threading.Event()

    def submit(self, op: Op) -> None:
        self._ops.put(op)

    def next_event(self, timeout: float | None = None) -> Event | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the worker has ended (True) or `timeout` passed (False)."""
        return self._closed.wait(timeout)
