"""The server's routes over one loaded model: the compatible APIs, health, metrics and the
resident-session API the agent's own client uses (server/sessions_api.py)."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from runtime.local_model import LocalModel
from server.anthropic_api import AnthropicEndpoints
from server.engine_worker import EngineWorker, Job
from server.generation import Outcome, check_window
from server.http import HttpError, Request, Response, Stream
from server.metrics import Metrics
from server.openai_api import OpenAIEndpoints
from server.prompts import Chat, PromptRenderer
from server.sessions_api import SessionEndpoints
from server.stabilize import PrefixTracker, stabilise

log = logging.getLogger(__name__)

# Metric labels by path (anything else counts as "other", so scans cannot grow the labels).
ENDPOINTS = {"/v1/chat/completions": "chat_completions", "/v1/completions": "completions",
             "/v1/messages": "messages", "/v1/models": "models", "/metrics": "metrics"}


class ServerContext:
    """What every handler shares: the model, its renderer, the engine worker, metrics."""

    def __init__(self, model: LocalModel, worker: EngineWorker, stabilise_prefix: bool = True,
                 temperature: float = 1.0):
        self.model = model
        self.temperature = temperature  # for requests that name none (the APIs' default: 1)
        self.model_name = model.name
        self.renderer = PromptRenderer(model)
        self.worker = worker
        self.metrics = Metrics()
        self.stabilise_prefix = stabilise_prefix
        self.tracker = PrefixTracker()
        self.stop_ids = model.engine.stop_ids
        worker.on_finish = self._finished

    def temperature_of(self, body: dict[str, Any]) -> Any:
        """The request's temperature, or the server's default when it names none."""
        value = body.get("temperature")
        return self.temperature if value is None else value

    def room(self, ids: list[int]) -> int:
        return check_window(ids, self.model.engine.max_context)

    def prepare_chat(self, chat: Chat, api: str) -> Chat:
        """Stabilise the prefix (unless turned off) and note where it diverged."""
        if self.stabilise_prefix:
            messages, info = stabilise(chat.messages)
            if info.dropped or info.moved:
                self.metrics.inc("stabilised_blocks_total", info.dropped, action="dropped")
                self.metrics.inc("stabilised_blocks_total", info.moved, action="moved")
            chat = Chat(messages, chat.tools)
        return chat

    def record(self, o: Outcome, endpoint: str) -> None:
        """Per-request counters once a generation ended (engine-side ones in _finished)."""
        self.metrics.inc("requests_total", endpoint=endpoint, status="200")

    def _finished(self, job: Job) -> None:
        u = job.usage
        m = self.metrics
        m.inc("prompt_tokens_total", u.prompt_tokens)
        m.inc("completion_tokens_total", u.completion_tokens)
        m.inc("computed_prompt_tokens_total", u.prompt_tokens - u.cached_tokens)
        for tier, n in u.cached_by_tier.items():
            m.inc("cached_prompt_tokens_total", n, tier=tier)
        if u.ttft_s:
            m.observe_ttft(u.ttft_s)
        if job.session is None and job.ids:
            diverged = self.tracker.observe(job.ids)
            if diverged:
                at, length = diverged
                m.inc("prefix_divergences_total")
                m.inc("prefix_diverged_tokens_total", length - at)
                log.info("prompt diverged from an earlier one at token %d of %d (%d cached "
                         "tokens after it not reusable)", at, length, length - at)


class Router:
    """Dispatch by method and path; checks the bearer token where one is set."""

    def __init__(self, ctx: ServerContext, token: str | None = None, sessions: bool = False):
        self.ctx = ctx
        self.token = token
        self.openai = OpenAIEndpoints(ctx)
        self.anthropic = AnthropicEndpoints(ctx)
        self.sessions = SessionEndpoints(ctx) if sessions else None

    async def __call__(self, req: Request, stream: Stream) -> Response | None:
        try:
            return await self._route(req, stream)
        except HttpError as e:
            endpoint = ENDPOINTS.get(req.path.rstrip("/"), "other")
            self.ctx.metrics.inc("requests_total", endpoint=endpoint, status=str(e.status))
            raise

    async def _route(self, req: Request, stream: Stream) -> Response | None:
        path = req.path.rstrip("/") or "/"
        if path == "/health":
            running, waiting = self.ctx.worker.load
            return Response.of_json({"status": "ok", "model": self.ctx.model_name,
                                     "running": running, "waiting": waiting})
        self._authorise(req)
        if path == "/metrics":
            running, waiting = self.ctx.worker.load
            self.ctx.metrics.gauges.update(requests_running=running, requests_waiting=waiting)
            return Response(body=self.ctx.metrics.render().encode(),
                            content_type="text/plain; version=0.0.4")
        routes: dict[tuple[str, str], Any] = {
            ("GET", "/v1/models"): self.openai.models,
            ("POST", "/v1/chat/completions"): self.openai.chat,
            ("POST", "/v1/completions"): self.openai.completions,
            ("POST", "/v1/messages"): self.anthropic.messages,
        }
        if self.sessions is not None and path.startswith("/resident/"):
            return await self.sessions.handle(req, stream, path)
        handler = routes.get((req.method, path))
        if handler is None:
            known = any(p == path for _, p in routes)
            raise HttpError(405 if known else 404,
                            f"{req.method} {path} is not served here", kind="not_found_error")
        result = handler(req) if req.method == "GET" else handler(req, stream)
        return await result if hasattr(result, "__await__") else result

    def _authorise(self, req: Request) -> None:
        if self.token is None:
            return
        given = req.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or req.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HttpError(401, "a bearer token is required (Authorization: Bearer TOKEN)",
                            kind="authentication_error")
