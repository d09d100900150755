"""A local conversation whose own replies are scripted while its forks generate for real: a
parent that makes exactly the task calls a test or benchmark needs, on any weights (random
ones call no tools), with sub-agents that run on the engine as they would for a real model.

A scripted reply's tokens go through the engine as decoding would leave them in the KV.
"""

from __future__ import annotations

import threading
import time

from agent.backends.base import GenParams
from agent.backends.local import LocalBackend, LocalConversation


class ScriptedParent(LocalConversation):
    """Replies with `script`'s next text while it has one; a fork has none. `first_token`
    collects when each real generation produced its first token."""

    script: list[str] = []
    first_token: list[float] = []

    def fork(self) -> ScriptedParent:
        child = super().fork()
        child.script = []
        return child

    def generate(self, params: GenParams, cancel: threading.Event):
        if not self.script:
            first = True
            for text in super().generate(params, cancel):
                if first:
                    self.first_token.append(time.perf_counter())
                    first = False
                yield text
            if first:  # a first token with no text of its own
                self.first_token.append(time.perf_counter())
            return
        text = self.script.pop(0)
        ids = [*self.model.tokenizer.encode(text), min(self.engine.stop_ids)]
        self.engine.extend(self.seq, ids)
        yield text
        self._finish(ids, "stop", 0.0)


class ScriptedParentBackend(LocalBackend):
    """A LocalBackend whose conversations are ScriptedParents."""

    conversation_type = ScriptedParent
