"""The resident server: one loaded model, its engine thread, and its listeners.

`ResidentServer.start()` opens the Unix socket (the agent's own clients; mode 0600, in the
user's runtime directory) and a TCP port (loopback unless `host` says otherwise, and then a
bearer token is required). `stop()` finishes running requests, then flushes every sealed
page to disk and closes the KV tiers, so a restart resumes from disk what it served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from runtime.local_model import LocalModel
from server.app import Router, ServerContext
from server.engine_worker import EngineWorker
from server.http import HttpServer

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """Where and how much to serve."""

    socket: Path | None = None  # None: no Unix socket
    host: str = "127.0.0.1"
    port: int | None = 8765  # None: no TCP listener; 0: any free port
    token: str | None = None
    max_running: int = 16
    max_waiting: int = 64
    max_body: int = 32 << 20
    stabilise: bool = True
    temperature: float = 1.0  # for requests that name none


class ServerError(Exception):
    """The server cannot start as asked (a one-line reason)."""


class ResidentServer:
    """Serves `model` until `stop()`; run it inside an asyncio loop."""

    def __init__(self, model: LocalModel, options: ServeOptions):
        if options.port is not None and options.host not in LOOPBACK and not options.token:
            raise ServerError(f"binding {options.host} exposes the model beyond this machine; "
                              "give --token (or AGENT_SERVER_TOKEN) for a bearer token")
        self.model = model
        self.options = options
        self.worker = EngineWorker(model.engine, options.max_running, options.max_waiting)
        self.ctx = ServerContext(model, self.worker, options.stabilise, options.temperature)
        self.port: int | None = None
        self._http: list[HttpServer] = []

    async def start(self) -> None:
        self.worker.start()
        o = self.options
        if o.socket is not None:
            await self._listen_unix(o.socket)
        if o.port is not None:
            http = HttpServer(Router(self.ctx, o.token), o.max_body)
            try:
                self.port = await http.listen_tcp(o.host, o.port)
            except OSError as e:
                raise ServerError(f"cannot listen on {o.host}:{o.port} ({e.strerror}); "
                                  "pick another --port") from e
            self._http.append(http)
        log.info("serving %s (socket %s, port %s)", self.model.name, o.socket, self.port)

    async def _listen_unix(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            if await _answers(path):
                raise ServerError(f"a server already listens on {path}")
            path.unlink()  # left by a server that died
        http = HttpServer(Router(self.ctx, None, sessions=True), self.options.max_body)
        old = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            await http.listen_unix(str(path))
        finally:
            os.umask(old)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        self._http.append(http)

    async def stop(self) -> None:
        """Stop listening, finish what runs, flush sealed pages, close the tiers."""
        for http in self._http:
            http.stop_listening()
        await asyncio.to_thread(self.worker.stop)
        for http in self._http:
            await http.close()
        for seq in list(self.worker.sessions.values()):
            self.model.engine.save_tail(seq)
        self.model.close()  # flushes every sealed page and stops the KV threads
        if self.options.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.options.socket.unlink()


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    writer.close()
    return True
