"""Start a tensor-parallel model: rank 0 is this process, ranks 1..N-1 are started here.

`open_parallel` (what LocalModel.open does for `tensor_parallel > 1`) spawns one process per
further rank, joins them in a process group through a TCPStore on a free local port, opens
the model on every rank at once (each its shard) and returns rank 0's LocalModel, whose
engine drives the others (mirror.py). The followers (follower.py) never outlive rank 0: they
ignore Ctrl-C (rank 0 decides), die with it (PR_SET_PDEATHSIG on Linux, end-of-file on the
link elsewhere), and are ended by `LocalModel.close` or, failing that, at rank 0's exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from runtime.distributed.context_parallel import CP_MIN_TOKENS
from runtime.distributed.group import init_group, leave_group
from runtime.distributed.link import Link
from runtime.distributed.mirror import Mirror
from runtime.distributed.rank import RankContext
from runtime.distributed.split import InvalidParallel, check_splittable
from runtime.errors import RuntimeError_

log = logging.getLogger(__name__)

START_TIMEOUT = timedelta(minutes=10)  # every rank imported torch and joined the store
_JOIN_S = 10.0  # a follower told to exit has this long before it is killed
_GRACE_S = 10.0  # after a follower died on its own, before rank 0 ends itself


def open_parallel(cls: Any, spec: str | None, options: Any, kv: Any = None) -> Any:
    """Rank 0's LocalModel of `spec` split over `options.tensor_parallel` ranks."""
    world = options.tensor_parallel
    if kv is not None:
        raise InvalidParallel("--tensor-parallel makes each rank's own KV pages; "
                              "an injected KV cache cannot be split")
    if options.weights == "native":
        raise InvalidParallel("--tensor-parallel splits dequantized weights; drop "
                              "--weights native (packed 4-bit CPU linears)")
    devices = rank_devices(options.device, world)
    options = dataclasses.replace(options, weights=options.weights or options.dtype
                                  or ("bf16" if devices[0].type == "cuda" else "fp32"))
    from runtime import settings
    from runtime.model_cache import resolve_model

    path = resolve_model(spec or settings.default_model(), progress=options.progress,
                         cache_dir=options.cache_dir)  # once, before any rank reads it
    _precheck(path, world)
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=START_TIMEOUT,
                          wait_for_workers=False)
    ranks = Followers.start(world, store.port, str(path), options, devices)
    try:
        ranks.wait_for("up")
        group = init_group(0, world, devices[0], store)
        mirror = Mirror(Link(ranks.conns))
        rank = RankContext(group, mirror.link, cp_min(options), mirror)
        model = cls.open(spec, dataclasses.replace(options, device=str(devices[0])), rank=rank)
        ranks.wait_for("ready")
    except BaseException as e:
        failure = ranks.failure()
        ranks.stop(lost=True)
        if failure and isinstance(e, Exception) and not isinstance(e, RuntimeError_):
            raise InvalidParallel(failure) from e  # rank 0 saw only the broken collective
        raise
    mirror.on_close = ranks.stop
    mirror.driving = True
    ranks.watch()
    return model


def _precheck(path: Path, world: int) -> None:
    """Refuse a folder's model that cannot be split before any process starts."""
    if (path / "config.json").is_file():
        from runtime.config import ModelConfig
        from runtime.loader.hf import read_json

        try:
            cfg = ModelConfig.from_hf(read_json(path / "config.json"))
        except Exception:  # noqa: BLE001 - the load reports a bad config in its own words
            return
        check_splittable(cfg, world)


def rank_devices(device: str | None, world: int) -> list[torch.device]:
    """One device per rank: cuda:0..N-1 (refused beyond the visible GPUs), or the CPU."""
    if world < 1:
        raise InvalidParallel(f"--tensor-parallel must be at least 1, got {world}")
    want = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if want.type == "cpu":
        return [want] * world
    if want.index not in (None, 0):
        raise InvalidParallel(f"--tensor-parallel uses cuda:0..{world - 1}; drop --device "
                              f"{device} and pick the GPUs with CUDA_VISIBLE_DEVICES")
    visible = torch.cuda.device_count()
    if world > visible:
        raise InvalidParallel(f"--tensor-parallel {world} needs {world} GPUs but {visible} "
                              "are visible; lower it or set CUDA_VISIBLE_DEVICES")
    return [torch.device("cuda", r) for r in range(world)]


def cp_min(options: Any) -> int:
    """The context-parallel threshold the options ask for."""
    cp = getattr(options, "context_parallel", None)
    return CP_MIN_TOKENS if cp is None else cp


@dataclasses.dataclass
class Followers:
    """The processes of ranks 1..N-1 and rank 0's ends of their pipes."""

    procs: list[subprocess.Popen]
    conns: list[Connection]
    errors: list[str] = dataclasses.field(default_factory=list)
    stopped: bool = False

    @classmethod
    def start(cls, world: int, port: int, spec: str, options: Any,
              devices: list[torch.device]) -> Followers:
        """`python -m runtime.distributed.follower` per rank (a fresh interpreter: no CUDA
        state or threads forked, and no re-run of the caller's main module), each handed
        one end of a socket pair as its link, its arguments the link's first message."""
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        procs, conns = [], []
        for r in range(1, world):
            ours, theirs = socket.socketpair()
            cmd = [sys.executable, "-m", "runtime.distributed.follower", str(theirs.fileno())]
            procs.append(subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=env))
            theirs.close()
            conn = Connection(ours.detach())
            conn.send((r, world, port, spec, options, str(devices[r]), os.getpid()))
            conns.append(conn)
        ranks = cls(procs, conns)
        atexit.register(ranks.stop)
        return ranks

    def watch(self) -> None:
        """From now on, watch the followers (below) on a thread."""
        threading.Thread(target=self._watch, name="rank-watch", daemon=True).start()

    def _watch(self) -> None:
        """A follower that dies on its own leaves rank 0 waiting in a collective (NCCL would
        wait out its timeout): say which one, and end this process after a grace period in
        which a collective that noticed (gloo does) may end it more gently."""
        while not self.stopped:
            dead = [(r, p.returncode) for r, p in enumerate(self.procs, 1) if p.poll() is not None]
            if dead and not self.stopped:
                rank, code = dead[0]
                log.error("rank %d exited on its own (code %s); the split model cannot go on",
                          rank, code)
                time.sleep(_GRACE_S)
                if not self.stopped:
                    os._exit(1)
                return
            time.sleep(0.5)

    def wait_for(self, kind: str) -> None:
        """Block until every follower said `kind`; raise InvalidParallel for one that failed
        or died first."""
        for r, (p, conn) in enumerate(zip(self.procs, self.conns), start=1):
            while not conn.poll(0.2):
                if p.poll() is not None:
                    raise InvalidParallel(f"rank {r} exited (code {p.returncode}) while starting")
            got, value = conn.recv()
            if got == "error":
                self.errors.append(value)
                raise InvalidParallel(value)
            assert got == kind, f"rank {r} said {got} before {kind}"

    def failure(self) -> str | None:
        """The first follower's own error message, if one sent it."""
        for conn in self.conns:
            try:
                while conn.poll(0.5):
                    kind, value = conn.recv()
                    if kind == "error":
                        self.errors.append(value)
            except (EOFError, OSError):
                continue
        return self.errors[0] if self.errors else None

    def stop(self, lost: bool = False) -> None:
        """Tell every follower to exit, wait a little, kill what is left; leave the group.
        `lost`: the ranks lost step (an interrupt inside a collective): kill them now."""
        if self.stopped:
            return
        self.stopped = True
        for conn in self.conns:
            try:
                conn.send(("exit", (), []))
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + (0.0 if lost else _JOIN_S)
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if not lost:
                    log.warning("rank process %s did not exit; killing it", p.pid)
                p.kill()
                p.wait()
        for conn in self.conns:
            conn.close()
        leave_group()
