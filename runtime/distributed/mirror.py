"""Rank 0 drives, the others follow: each engine call made on rank 0 is replayed everywhere.

`DrivingEngine` (rank 0) sends every call that changes the engine (extend, restore, fork,
truncate, release, add_request, step, abort, save_tail, warm_up) and its KV calls (flush,
close, evictions) over the link, with sequences and requests named by rank 0's ids; `follow`
(every other rank) replays them on its own RankEngine. Calls that run collectives are sent
before rank 0 runs them, so all ranks enter them together; calls that create a sequence or a
request are sent after, with the id rank 0 gave it. Only the outermost call is sent (extend
calls restore inside, on every rank alike).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from runtime.distributed.agreement import (
    FOLLOWED,
    AgreedKV,
    DrivenConstraint,
    FollowedConstraint,
)
from runtime.distributed.link import Link
from runtime.distributed.rank_engine import RankEngine
from runtime.distributed.split import InvalidParallel
from runtime.engine.sampling import SamplingParams
from runtime.engine.scheduler import Request
from runtime.engine.sequence import Sequence
from runtime.errors import RuntimeError_

log = logging.getLogger(__name__)

KV_CALLS = ("flush", "close", "evict_all_to_host", "evict_all_to_disk")
# Calls that run no collective: once the ranks lost step they still run, on rank 0 alone, so
# the cleanup after an interrupt (abort, release, close) does not mask it.
LOCAL_CALLS = ("new_sequence", "fork", "add_request", "release", "truncate", "save_tail",
               "abort", "kv.flush", "kv.close")


@dataclasses.dataclass(frozen=True)
class SeqRef:
    seq_id: int


@dataclasses.dataclass(frozen=True)
class ReqRef:
    req_id: int


class Mirror:
    """Rank 0's side of the link: what to send, when, and whether the ranks are still in
    step (an interrupt inside a call leaves the others inside it: nothing is sent after)."""

    def __init__(self, link: Link):
        self.link = link
        self.driving = False  # off while every rank opens the model on its own
        self.depth = 0
        self.lost: str | None = None
        self.known: set[int] = set()  # rank 0's ids of the sequences the followers have
        self.forgotten: list[int] = []  # sequences rank 0 dropped since the last message
        self.on_close: Callable[[bool], None] | None = None  # called with `lost`

    @contextmanager
    def call(self, name: str, *args: Any, after: bool = False) -> Iterator[list]:
        """Run a call as mirrored: sent first (or, with `after`, once it returned, with the
        values appended to the yielded list)."""
        outer = self.driving and self.depth == 0
        if outer and self.lost:
            if name not in LOCAL_CALLS:
                raise InvalidParallel(self.lost)
            outer = False
        if outer and not after:
            self.send(name, *args)
        extra: list = []
        self.depth += 1
        try:
            yield extra
        except BaseException as e:
            if outer and not isinstance(e, Exception):
                self.lost = ("the tensor-parallel ranks lost step (interrupted inside "
                             f"{name}); restart the command")
            raise
        finally:
            self.depth -= 1
        if outer and after:
            self.send(name, *args, *extra)

    def send(self, name: str, *args: Any) -> None:
        forgotten, self.forgotten = self.forgotten, []
        self.link.send((name, tuple(self.encode(a) for a in args), forgotten))

    def encode(self, value: Any) -> Any:
        if isinstance(value, Sequence):
            if value.seq_id not in self.known:
                raise InvalidParallel("a sequence not made by this engine (new_sequence or "
                                      "fork) cannot be used with --tensor-parallel")
            return SeqRef(value.seq_id)
        if isinstance(value, Request):
            return ReqRef(value.req_id)
        if isinstance(value, SamplingParams) and value.constraint is not None:
            return dataclasses.replace(value, constraint=FOLLOWED)
        return value

    def track(self, seq: Sequence) -> None:
        """A sequence the followers now have too; when rank 0 drops it, so do they."""
        self.known.add(seq.seq_id)
        weakref.finalize(seq, self._forget, seq.seq_id)

    def _forget(self, seq_id: int) -> None:
        self.known.discard(seq_id)
        self.forgotten.append(seq_id)  # sent with the next message, never from a finalizer


class DrivingEngine(RankEngine):
    """Rank 0's engine: every state-changing call is mirrored to the followers first."""

    def __init__(self, *args: Any, mirror: Mirror, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mirror = mirror
        self.kv = DrivingKV(self.kv, mirror)

    def new_sequence(self) -> Sequence:
        with self.mirror.call("new_sequence", after=True) as extra:
            seq = super().new_sequence()
            self.mirror.track(seq)
            extra.append(seq.seq_id)
        return seq

    def fork(self, seq: Sequence) -> Sequence:
        with self.mirror.call("fork", seq, after=True) as extra:
            child = super().fork(seq)
            self.mirror.track(child)
            extra.append(child.seq_id)
        return child

    def add_request(self, seq: Sequence, params: SamplingParams) -> Request:
        if params.constraint is not None and self.mirror.driving:
            params = dataclasses.replace(
                params, constraint=DrivenConstraint(params.constraint, self.mirror.link))
        with self.mirror.call("add_request", seq, params, after=True) as extra:
            req = super().add_request(seq, params)
            extra.append(req.req_id)
        return req

    def release(self, seq):
        with self.mirror.call("release", seq):
            return super().release(seq)

    def truncate(self, seq, n):
        with self.mirror.call("truncate", seq, n):
            return super().truncate(seq, n)

    def extend(self, seq, ids, progress=None):
        with self.mirror.call("extend", seq, list(ids)):
            return super().extend(seq, ids, progress)

    def restore(self, seq, ids):
        with self.mirror.call("restore", seq, list(ids)):
            return super().restore(seq, ids)

    def save_tail(self, seq):
        with self.mirror.call("save_tail", seq):
            return super().save_tail(seq)

    def abort(self, req):
        with self.mirror.call("abort", req):
            return super().abort(req)

    def step(self):
        with self.mirror.call("step"):
            return super().step()

    def warm_up(self):
        with self.mirror.call("warm_up"):
            return super().warm_up()


class DrivingKV:
    """Rank 0's KV pages: flush, close and the evictions are mirrored; `close` (always there,
    whether the pages have one or not) also ends the followers (Mirror.on_close)."""

    def __init__(self, inner: AgreedKV, mirror: Mirror):
        self.inner = inner
        self.mirror = mirror

    def __getattr__(self, name: str) -> Any:
        if name in KV_CALLS and name != "close" and hasattr(self.inner, name):
            return lambda: self._mirrored(name)
        return getattr(self.inner, name)

    def close(self) -> None:
        try:
            self._mirrored("close")
        finally:
            self.mirror.driving = False  # the followers are gone: a second close is local
            if self.mirror.on_close is not None:
                self.mirror.on_close(self.mirror.lost is not None)

    def _mirrored(self, name: str) -> None:
        with self.mirror.call(f"kv.{name}"):
            method = getattr(self.inner, name, None)
            if method is not None:
                method()


def follow(engine: RankEngine, link: Link) -> None:
    """A follower's loop: replay rank 0's calls until it says exit (or is gone: RankLost)."""
    seqs: dict[int, Sequence] = {}
    reqs: dict[int, Request] = {}

    def decode(value: Any) -> Any:
        if isinstance(value, SeqRef):
            return seqs[value.seq_id]
        if isinstance(value, ReqRef):
            return reqs.pop(value.req_id, None)
        if isinstance(value, SamplingParams) and value.constraint == FOLLOWED:
            return dataclasses.replace(value, constraint=FollowedConstraint(link))
        return value

    while True:
        name, raw, forgotten = link.recv()
        for seq_id in forgotten:
            seqs.pop(seq_id, None)
        if name == "exit":
            return
        try:
            _replay(engine, name, [decode(a) for a in raw], seqs, reqs)
        except RuntimeError_ as e:  # rank 0 met the same error and reports it
            log.debug("rank %d: %s failed as on rank 0: %s", engine.group.rank, name, e)
        except Exception as e:  # noqa: BLE001 - perhaps this rank's alone: say it
            log.warning("rank %d: %s failed: %s", engine.group.rank, name, e)


def _replay(engine: RankEngine, name: str, args: list, seqs: dict, reqs: dict) -> None:
    if name == "new_sequence":
        seqs[args[0]] = engine.new_sequence()
    elif name == "fork":
        seqs[args[1]] = engine.fork(args[0])
    elif name == "add_request":
        reqs[args[2]] = engine.add_request(args[0], args[1])
    elif name == "abort":
        if args[0] is not None:
            engine.abort(args[0])
    elif name.startswith("kv."):
        method = getattr(engine.kv, name[3:], None)
        if method is not None:
            method()
    else:
        getattr(engine, name)(*args)
        if name == "step":  # finished requests are retired: rank 0's abort is a no-op
            for rid in [rid for rid, r in reqs.items() if r.finished]:
                del reqs[rid]
