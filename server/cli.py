"""`agent serve`: the flags, and running the server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from runtime import settings


def add_server_flag(p: argparse.ArgumentParser) -> None:
    """--server for the commands that talk to a model (`agent`, `agent run`)."""
    p.add_argument("--server", choices=["auto", "off"], default=None,
                   help="auto: use the resident server (`agent serve`), starting one if none "
                   "runs; off: load the model in this process (default: auto on a GPU, off "
                   "on the CPU; env AGENT_SERVER)")


def remote_model(spec: str | None, flag: str | None, cache_dir: Path | None = None):
    """The resident server's model for `agent generate`, or None to load it here."""
    from agent.backends.resident import connect, default_mode

    backend = connect(spec, default_mode(flag), cache_dir=cache_dir)
    return None if backend is None else backend.model


def register(sub) -> None:
    """Add `serve` to the `agent` command's subparsers."""
    from cli.common import add_model_flags

    p = sub.add_parser("serve", help="the resident runtime: one loaded model for every session "
                       "and for OpenAI/Anthropic-compatible clients")
    add_model_flags(p)
    p.add_argument("--socket", default=None, help="Unix socket path (default: in the user's "
                   "runtime directory)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind the HTTP API (default loopback; others need --token)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (0: any free port)")
    p.add_argument("--no-http", action="store_true", help="serve the Unix socket only")
    p.add_argument("--token", default=None,
                   help="bearer token clients must send (or AGENT_SERVER_TOKEN)")
    p.add_argument("--max-running", type=int, default=16,
                   help="requests decoded together (default 16)")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="requests queued beyond those; more get 429 (default 64)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of requests that name none (default 1, as the "
                   "APIs document; 0: greedy)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="shut down (flushing the KV) after this long without a request")
    p.add_argument("--no-stabilise", action="store_true",
                   help="keep volatile prompt blocks (billing nonces, dates) in place")
    p.add_argument("--stop", action="store_true",
                   help="stop the server listening on --socket (it finishes running requests "
                   "and flushes its KV pages first), then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.backends.resident import socket_path
    from cli.common import err, model_options, out, resolve_dirs
    from runtime.local_model import LocalModel, RuntimeOptions
    from server.resident import ResidentServer, ServeOptions

    if args.stop:
        return stop_server(socket_path(args.socket))
    _log_to_stderr()
    dirs = resolve_dirs(args)
    options = ServeOptions(
        socket=socket_path(args.socket), host=args.host,
        port=None if args.no_http else args.port,
        token=settings.resolve("server_token", args.token),
        max_running=args.max_running, max_waiting=args.max_waiting,
        stabilise=not args.no_stabilise, temperature=args.temperature)
    model = LocalModel.open(args.model, RuntimeOptions(**model_options(args),
                                                       cache_dir=dirs.cache_dir,
                                                       constraints=True))
    server = ResidentServer(model, options)
    try:
        asyncio.run(_serve(server, out, args.idle_exit))
    except KeyboardInterrupt:
        err("interrupted")
    return 0


def stop_server(path: Path, timeout: float = 300.0) -> int:
    """SIGTERM to the server behind the socket at `path` (its pid from `info`), then wait for
    it to flush and exit. 0 when it stopped, 1 when none runs there or it did not stop."""
    from agent.backends.resident import ResidentClient, ServerUnavailable
    from cli.common import err, out

    try:
        pid = ResidentClient(path, timeout=30).call("info").get("pid")
    except ServerUnavailable:
        err(f"no server is running at {path}")
        return 1
    if not isinstance(pid, int):
        err(f"the server at {path} does not say its pid (an older version): stop it with "
            "Ctrl-C or SIGTERM")
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            err(f"the server (pid {pid}) is still flushing after {timeout:g} s")
            return 1
        time.sleep(0.2)
    out(f"stopped the server (pid {pid})")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _log_to_stderr() -> None:
    """The server's own log (requests diverging from the cached prefix, start, stop) at
    INFO, beside the CLI's warnings-only root logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    log = logging.getLogger("server")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


async def _serve(server, out, idle_exit: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    where = [str(server.options.socket)] if server.options.socket else []
    if server.port is not None:
        where.append(f"http://{server.options.host}:{server.port}")
    out(f"serving {server.model.name} on {' and '.join(where)}")
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except TimeoutError:
            if idle_exit is not None and server.worker.idle_s() > idle_exit:
                out(f"idle for {idle_exit:g} s")
                break
    out("shutting down: finishing requests and flushing KV pages")
    await server.stop()
