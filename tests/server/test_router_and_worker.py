"""The bearer token (required to bind beyond loopback, checked on every route but /health),
and the worker's bound on resident sessions (least recently used idle ones released)."""

from __future__ import annotations

import asyncio

import pytest

from server.app import Router
from server.http import HttpError, Request
from server.resident import ResidentServer, ServeOptions, ServerError


def call(router: Router, path: str, headers: dict[str, str] | None = None):
    return asyncio.run(router(Request("GET", path, headers or {}), None))


def test_a_bearer_token_guards_every_route_but_health(served):
    router = Router(served.server.ctx, token="s3cret")
    assert call(router, "/health").status == 200
    for headers in ({}, {"authorization": "Bearer wrong"}):
        with pytest.raises(HttpError) as e:
            call(router, "/v1/models", headers)
        assert e.value.status == 401 and "bearer token" in e.value.message
    assert call(router, "/v1/models", {"authorization": "Bearer s3cret"}).status == 200
    assert call(router, "/metrics", {"x-api-key": "s3cret"}).status == 200


def test_binding_beyond_loopback_needs_a_token(served):
    with pytest.raises(ServerError, match="--token"):
        ResidentServer(served.server.model, ServeOptions(host="0.0.0.0"))


def test_idle_sessions_beyond_the_bound_are_released(served):
    worker = served.server.worker
    saved, worker.max_sessions = worker.max_sessions, 2

    def fill(engine):
        for sid in ("a", "b", "c"):
            engine.restore(worker.session(sid), [1, 2, 3])
        return list(worker.sessions)

    try:
        assert worker.call(fill).result(30) == ["b", "c"]
        assert worker.call(lambda e: len(worker.session("c").tokens)).result(30) == 3
    finally:
        worker.max_sessions = saved
        for sid in ("b", "c"):
            worker.call(lambda e, sid=sid: e.release(worker.sessions.pop(sid))).result(30)
