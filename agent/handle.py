"""The one interface between the agent core and any front end."""

from __future__ import annotations

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
