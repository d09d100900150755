"""Every app-level message, as a dataclass.

The agent reaches the UI only through these: the event pump turns `AgentHandle` events into
`AgentEventReceived` / `TextStreamed` / `AgentClosed`, and workers report back with the rest.
Messages from a pump carry their `source` handle, so events of a session the app has already
left (after a resume or fork) are recognised and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from agent.events import Event
from agent.handle import AgentHandle
from tui.catalog import SessionSummary
from tui.commands import Invocation


@dataclass
class AgentEventReceived(Message):
    """An event from the agent (TokenDeltas come batched, as TextStreamed)."""

    event: Event
    source: AgentHandle


@dataclass
class TextStreamed(Message):
    """Assistant text: one or more consecutive TokenDeltas joined."""

    text: str
    source: AgentHandle


@dataclass
class AgentClosed(Message):
    """The handle reports `closed`: no more events will come from it."""

    source: AgentHandle


@dataclass
class PromptSubmitted(Message):
    """The user pressed enter in the prompt."""

    text: str


@dataclass
class SessionOpened(Message):
    """A resumed or forked session is running; the app switches to its handle."""

    handle: AgentHandle
    session_id: str
    origin: SessionSummary  # the session picked (for a fork, the one it was copied from)


@dataclass
class SessionsListed(Message):
    """The catalog's sessions, for the picker."""

    sessions: list[SessionSummary]


@dataclass
class ContextMeasured(Message):
    """Tokens per context segment, from the `context_breakdown` callable."""

    breakdown: dict[str, int]


@dataclass
class Rewound(Message):
    """The `rewind` callable returned: turn `turn` and everything after it are gone."""

    turn: int


@dataclass
class TaskFailed(Message):
    """Work in a worker thread raised; `what` names the work for the user."""

    what: str
    error: str


@dataclass
class CommandEntered(Message):
    """The user typed a slash command (or `?`); the app runs it."""

    invocation: Invocation
