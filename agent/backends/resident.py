"""The resident server as a model backend: conversations whose KV stays in `agent serve`.

The conversation is the local one (same template rendering, same token log, same tool-call
constraints); only the engine is remote. A `RemoteEngine` mirrors the engine calls a
LocalConversation makes (restore, extend, generate, truncate, release) over the server's Unix
socket, sending only the tokens a turn adds. When the server lost the session (it
restarted), it answers 409 and the client restores the session from its own token log,
which the server serves from its tiers (device, host, then disk).

`connect(spec, mode)` decides: "off" never connects; "auto" connects to a server that runs
the same model, or starts one (`agent serve --no-http --idle-exit 1800`) and waits for its
socket.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_runtime_dir

from agent.backends.local import LocalBackend, LocalConversation
from runtime import settings
from runtime.engine.postprocess import StreamEvent
from runtime.engine.results import ExtendResult
from runtime.engine.sampling import SamplingParams

log = logging.getLogger(__name__)


# A server started on demand gives the GPU back after this long without a request.
IDLE_EXIT_S = 1800


class ServerUnavailable(Exception):
    """The resident server cannot be reached (or refused the request)."""


class _Conflict(Exception):
    """The server's session does not hold the tokens the client expects."""


def socket_path(flag: str | Path | None = None) -> Path:
    """The Unix socket: --socket, AGENT_SOCKET, else agent.sock in the user's runtime dir."""
    given = settings.resolve("socket", flag)
    return Path(given) if given else Path(user_runtime_dir("resident-agent")) / "agent.sock"


def default_mode(flag: str | None = None) -> str:
    """--server, AGENT_SERVER, else "auto" on a CUDA machine and "off" on the CPU (where a
    process loads the small default model in about a second) and under pytest."""
    given = settings.resolve("server", flag)
    if given:
        if given not in ("auto", "off"):
            raise ValueError(f"--server must be auto or off, got {given!r}")
        return given
    if settings.under_pytest():  # a test's `agent run` must not leave a server behind
        return "off"
    import torch

    return "auto" if torch.cuda.is_available() else "off"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class ResidentClient:
    """JSON calls and event streams over the server's Unix socket."""

    def __init__(self, path: Path, timeout: float = 3600.0):
        self.path, self.timeout = path, timeout

    def call(self, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp, conn = self._send(route, body)
        try:
            return json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def stream(self, route: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        resp, conn = self._send(route, body)
        try:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    yield json.loads(line[5:])
        finally:
            conn.close()

    def _send(self, route: str, body: dict[str, Any] | None):
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request("POST", f"/resident/v1/{route}", json.dumps(body or {}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise ServerUnavailable(f"cannot reach the server at {self.path} ({e}); start "
                                    "it with `agent serve` or use --server off") from e
        if resp.status == 409:
            conn.close()
            raise _Conflict(resp.read().decode())
        if resp.status != 200:
            message = json.loads(resp.read() or b"{}").get("error", {}).get("message", "")
            conn.close()
            raise ServerUnavailable(f"the server answered {resp.status}: {message}")
        return resp, conn


@dataclass
class RemoteSequence:
    """The client's copy of a session's token log; the KV is the server's."""

    sid: str = field(default_factory=lambda: uuid.uuid4().hex)
    tokens: list[int] = field(default_factory=list)


class RemoteEngine:
    """The engine calls a LocalConversation makes, served by the resident server."""

    def __init__(self, client: ResidentClient, info: dict[str, Any]):
        self.client = client
        self.stop_ids = frozenset(info["stop_ids"])
        self.max_context = info["context_window"]
        self.page_size = info["page_size"]

    def new_sequence(self) -> RemoteSequence:
        return RemoteSequence()

    def restore(self, seq: RemoteSequence, ids: list[int]) -> ExtendResult:
        r = self.client.call(f"sessions/{seq.sid}/restore", {"tokens": seq.tokens + ids})
        seq.tokens += ids
        return _result(len(ids), r)

    def extend(self, seq: RemoteSequence, ids: list[int], progress=None) -> ExtendResult:
        try:
            r = self.client.call(f"sessions/{seq.sid}/extend",
                                 {"base": len(seq.tokens), "ids": ids})
        except _Conflict:  # the server restarted: it restores the session from our log
            return self.restore(seq, ids)
        seq.tokens += ids
        return _result(len(ids), r)

    def generate(self, seq: RemoteSequence, params: SamplingParams) -> Iterator[StreamEvent]:
        body = {"base": len(seq.tokens), "sampling": _sampling(params)}
        events = self.client.stream(f"sessions/{seq.sid}/generate", body)
        try:
            first = next(events)
        except _Conflict:  # the server restarted: restore the session, then generate
            self.restore(seq, [])
            events = self.client.stream(f"sessions/{seq.sid}/generate", body)
            first = next(events)
        for e in itertools.chain([first], events):
            if "done" in e:
                return
            seq.tokens.append(e["token_id"])
            yield StreamEvent(e["token_id"], e["text"], e["finish_reason"])

    def fork(self, seq: RemoteSequence) -> RemoteSequence:
        """A new server session restored from this one's tokens: the server's prefix cache
        serves the full pages (shared); the partial page is computed with the next append."""
        child = RemoteSequence()
        self.restore(child, list(seq.tokens))
        return child

    def save_tail(self, seq: RemoteSequence) -> None:
        """The server saves the partial page when the session is released."""

    def truncate(self, seq: RemoteSequence, n: int) -> None:
        self.client.call(f"sessions/{seq.sid}/truncate", {"n": n})
        del seq.tokens[n:]

    def release(self, seq: RemoteSequence) -> None:
        try:
            self.client.call(f"sessions/{seq.sid}/release")
        except ServerUnavailable as e:
            log.warning("could not release session %s: %s", seq.sid, e)


def _result(n: int, r: dict[str, Any]) -> ExtendResult:
    return ExtendResult(n, r["cached_tokens"], r["cached_by_tier"], r["computed_tokens"],
                        r["seconds"], restore_seconds=r["seconds"])


def _sampling(p: SamplingParams) -> dict[str, Any]:
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "seed": p.seed,
            "max_tokens": p.max_tokens, "stop": list(p.stop),
            "stop_token_ids": list(p.stop_token_ids), "ignore_eos": p.ignore_eos,
            "constraint": p.constraint}


@dataclass(frozen=True)
class RemoteConfig:
    """The part of the model config clients read."""

    max_position_embeddings: int


@dataclass
class RemoteModel:
    """What a LocalConversation (and `agent generate`) needs of a model, with the engine on
    the server; nothing was loaded here, so load and warm-up cost nothing."""

    name: str
    path: Path
    tokenizer: Any
    template: Any
    engine: RemoteEngine
    fingerprint: str
    client: ResidentClient
    config: RemoteConfig
    load_s: float = 0.0
    warmup_s: float = 0.0

    @property
    def context_window(self) -> int:
        return self.engine.max_context

    def flush(self) -> None:
        self.client.call("flush")

    def close(self) -> None:
        return None  # the server keeps the model (and the KV) for the next client


class ResidentConversation(LocalConversation):
    """A LocalConversation whose constraints travel to the server as data."""

    def _constraint(self, tool_choice: str, narrowed=None):
        return self._constraint_spec(tool_choice, narrowed)


class ResidentBackend(LocalBackend):
    """Conversations on the resident server's model."""

    conversation_type = ResidentConversation

    def memory_plan(self) -> dict[str, Any] | None:
        return self.model.client.call("info").get("plan")

    def kv_pages(self) -> dict[str, int] | None:
        s = self.model.client.call("info").get("kv")
        if not s:
            return None
        return {"device": s["device"]["pages"] - s["device"]["free"],
                "host": s["host"]["cached"], "disk": s.get("disk", {}).get("own_files", 0),
                "page_size": self.model.engine.page_size}


def open_remote(path: Path) -> ResidentBackend:
    """A backend on the server listening at `path` (ServerUnavailable if none)."""
    from runtime.local_model import _load_tokenizer, _template

    client = ResidentClient(path)
    info = client.call("info")
    tokenizer = _load_tokenizer(Path(info["path"]))
    model = RemoteModel(info["model"], Path(info["path"]), tokenizer, _template(tokenizer),
                        RemoteEngine(client, info), info["fingerprint"], client,
                        RemoteConfig(info["window"]))
    return ResidentBackend(model)


def connect(spec: str | None, mode: str, wait_s: float = 300.0,
            cache_dir: Path | None = None) -> ResidentBackend | None:
    """The resident backend for `spec`, or None to run in this process (see the module
    docstring)."""
    if mode == "off":
        return None
    path, want = socket_path(), spec or settings.default_model()
    try:
        backend = open_remote(path)
    except ServerUnavailable:
        backend = _start_and_open(path, want, wait_s, cache_dir)
    if backend.name != want:
        log.warning("the server at %s runs %s, not %s: running in this process",
                    path, backend.name, want)
        return None
    return backend


def _start_and_open(path: Path, spec: str, wait_s: float,
                    cache_dir: Path | None = None) -> ResidentBackend:
    log.info("starting a resident server for %s", spec)
    where = ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-http", "--model", spec,
                      "--socket", str(path), "--idle-exit", str(IDLE_EXIT_S), *where],
                     stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_remote(path)
        except ServerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
