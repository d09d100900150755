"""Link: the command channel from the driving rank (0) to the following ranks.

One `multiprocessing` pipe per follower. Rank 0 sends each engine call it mirrors, and the
few values only it can decide (a constraint's verdict); a follower reads them in the same
order, because every rank runs the same code between two messages. A pipe, not a collective:
an idle agent waits for its user for hours, and a follower blocked on a pipe waits without a
timeout and learns of a dead rank 0 from end-of-file.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any


class RankLost(Exception):
    """Rank 0's end of the link closed: the driving process is gone."""


class Link:
    """Rank 0 holds one connection per follower; a follower holds its one connection."""

    def __init__(self, conns: list[Connection]):
        self.conns = conns

    def send(self, message: Any) -> None:
        """Rank 0: the same message to every follower."""
        for conn in self.conns:
            conn.send(message)

    def recv(self) -> Any:
        """A follower: the next message (blocks); RankLost when rank 0 is gone."""
        try:
            return self.conns[0].recv()
        except (EOFError, OSError) as e:
            raise RankLost("rank 0 closed the link") from e

    def value(self, message_kind: str) -> Any:
        """A follower: the next message, which must be a value of `message_kind`."""
        kind, value = self.recv()
        assert kind == message_kind, f"ranks lost step: expected {message_kind}, got {kind}"
        return value

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
