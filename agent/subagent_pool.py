"""Running several sub-agents of one step side by side, at most `MAX_SIDE_BY_SIDE` at once.

How depends on where the model runs:
- the local engine (GPU or CPU): each sub-agent's loop on a thread, every engine call through
  an `EngineHub` that the launching thread drives, so their decodes share each
  `Engine.step()`. On the CPU this was measured against running them one after another
  (SmolLM2-135M, a 780-token context, 48 tokens each, 2 loaded cores): 4 sub-agents took
  143 s batched against 259 s in turn, 2 took 136 s against 108 s; batching is kept there too,
  so that side by side means the same everywhere (`subagent_limit=1` runs them in turn);
- a remote model (an OpenAI-compatible server, a script): each loop on a thread; the server
  batches them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from agent.backends.base import Conversation
from agent.backends.local import LocalConversation
from agent.subagent_engine import EngineHub

# Sub-agents of one step running at once (more wait for a place). Attention reads each one's
# view of the shared context on its own: at 128K tokens of Qwen2.5-7B that is 7.3 GB a row per
# decode step (about 1.8 ms at 4 TB/s) beside the weights' 15 GB (about 3.6 ms). Four rows make
# a step of about 11 ms against 5.4 ms alone (estimates from bandwidth, not measured): each
# sub-agent still decodes at half a lone one's speed or better, and four times the work is done.
MAX_SIDE_BY_SIDE = 4

T = TypeVar("T")


def run_all(parent: Conversation, children: Sequence[Conversation],
            jobs: Sequence[Callable[[], T]], limit: int | None = None) -> list[T]:
    """Run `jobs[i]` (the loop of `children[i]`) and return their results in order."""
    assert len(children) == len(jobs), "one job per child conversation"
    limit = MAX_SIDE_BY_SIDE if limit is None else max(1, limit)
    if limit == 1 or len(jobs) == 1:
        return [job() for job in jobs]
    engine = parent.model.engine if isinstance(parent, LocalConversation) else None
    hub = EngineHub(engine) if engine is not None and hasattr(engine, "step") else None
    return _threads(children, jobs, limit, hub)


def _threads(children: Sequence[Conversation], jobs: Sequence[Callable[[], T]], limit: int,
             hub: EngineHub | None) -> list[T]:
    results: list[T | BaseException | None] = [None] * len(jobs)
    places = threading.Semaphore(limit)

    def work(i: int) -> None:
        with places:
            try:
                results[i] = jobs[i]()
            except BaseException as e:  # noqa: BLE001 - re-raised on the launching thread
                results[i] = e
            finally:
                if hub is not None:
                    hub.wake()

    if hub is not None:
        for child in children:
            child.engine_override = hub
    threads = [threading.Thread(target=work, args=(i,), name=f"subagent-{i}", daemon=True)
               for i in range(len(jobs))]
    try:
        for t in threads:
            t.start()
        if hub is not None:
            hub.drive(lambda: not any(t.is_alive() for t in threads))
        for t in threads:
            t.join()
    finally:
        if hub is not None:
            for child in children:
                child.engine_override = None
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]
