"""A follower rank's process: `python -m runtime.distributed.follower FD` (launch.py starts it).

It reads its arguments from the link (file descriptor FD), joins the group, opens its shard
of the model and replays rank 0's calls (mirror.py) until told to exit or rank 0 is gone.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from runtime.distributed.group import init_group, leave_group
from runtime.distributed.launch import START_TIMEOUT, cp_min
from runtime.distributed.link import Link, RankLost
from runtime.distributed.mirror import follow
from runtime.distributed.rank import RankContext

log = logging.getLogger(__name__)


def main(fd: int) -> None:
    conn = Connection(fd)
    rank, world, port, spec, options, device, parent = conn.recv()
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)  # rank 0 says it once
    if torch.device(device).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    else:
        torch.cuda.set_device(torch.device(device))
    conn.send(("up", None))
    from runtime.local_model import LocalModel

    link, model = Link([conn]), None
    try:
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=START_TIMEOUT)
        group = init_group(rank, world, torch.device(device), store)
        ctx = RankContext(group, link, cp_min(options))
        model = LocalModel.open(spec, dataclasses.replace(options, device=device,
                                                          progress=False), rank=ctx)
        conn.send(("ready", None))
        follow(model.engine, link)
    except RankLost:
        if model is not None:
            model.engine.kv.close()  # what was sealed stays durable
    except Exception as e:
        if model is None:
            _report(conn, f"rank {rank}: {e}")
        else:
            log.error("rank %d stopped: %s", rank, e)
    finally:
        leave_group()


def _report(conn: Connection, message: str) -> None:
    try:
        conn.send(("error", message.splitlines()[0] if message else "failed"))
    except (BrokenPipeError, OSError):
        pass


def _die_with_parent(parent: int) -> None:
    """Be killed when rank 0's process (`parent`) ends, however it ends (Linux); elsewhere a
    follower learns it from its link's end-of-file."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
