"""The resident-session API the agent's own client speaks (agent/backends/resident.py).

A session is an engine sequence the server keeps between requests, so a turn sends only the
tokens it adds and the KV stays where it is (device, or host after eviction). Every call
names the length the client believes the session has (`base`); a mismatch (the server
restarted, or another client touched it) is a 409 and the client restores from its log.
Routes, all POST under /resident/v1: `info`, `flush`, `sessions/ID/restore {tokens}`,
`sessions/ID/extend {base, ids}`, `sessions/ID/generate {base, sampling}` (SSE),
`sessions/ID/truncate {n}`, `sessions/ID/release`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from runtime.constraints import text_only_constraint, tool_call_constraint
from runtime.engine.engine import Engine
from runtime.engine.sampling import SamplingParams
from runtime.errors import InvalidSampling
from server.generation import Generation
from server.http import HttpError, Request, Response, Stream

log = logging.getLogger(__name__)


class SessionEndpoints:
    """Handlers; session state lives in the worker (`worker.sessions`), on its thread."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.worker = ctx.worker

    async def handle(self, req: Request, stream: Stream, path: str) -> Response | None:
        parts = path.removeprefix("/resident/v1/").split("/")
        body = req.json() if req.body else {}
        if parts == ["info"]:
            return Response.of_json(self._info())
        if parts == ["flush"]:
            await self._call(lambda e: e.kv.flush())
            return Response.of_json({"ok": True})
        if len(parts) != 3 or parts[0] != "sessions" or req.method != "POST":
            raise HttpError(404, f"{path} is not a resident route")
        sid, op = parts[1], parts[2]
        if op == "generate":
            return await self._generate(sid, body, stream)
        ops = {"restore": self._restore, "extend": self._extend, "truncate": self._truncate,
               "release": self._release}
        if op not in ops:
            raise HttpError(404, f"unknown session operation {op!r}")
        return Response.of_json(await self._call(lambda e: ops[op](e, sid, body)))

    def _info(self) -> dict[str, Any]:
        m = self.ctx.model
        stats = getattr(m.engine.kv, "stats", None)
        return {"model": m.name, "fingerprint": m.fingerprint, "path": str(m.path),
                "pid": os.getpid(),
                "context_window": m.context_window,
                "window": m.config.max_position_embeddings, "stop_ids": sorted(m.engine.stop_ids),
                "kv": stats() if stats else None, "page_size": m.engine.page_size,
                "plan": m.plan.to_dict() if getattr(m, "plan", None) is not None else None}

    async def _call(self, fn) -> Any:
        future = self.worker.call(fn)
        try:
            return await asyncio.wrap_future(future)
        except _Conflict as e:
            raise HttpError(409, str(e), kind="conflict") from e
        except (ValueError, KeyError, AssertionError) as e:
            raise HttpError(400, str(e)) from e

    def _seq(self, engine: Engine, sid: str, base: int | None):
        seq = self.worker.session(sid)
        if base is not None and base != len(seq.tokens):
            raise _Conflict(len(seq.tokens))
        return seq

    def _restore(self, engine: Engine, sid: str, body: dict) -> dict:
        old = self.worker.sessions.pop(sid, None)
        if old is not None:
            engine.release(old)
        seq = self._seq(engine, sid, None)
        r = engine.restore(seq, _ints(body.get("tokens")))
        log.info("session %s restored: %d tokens, %d from cache %s", sid[:8], len(seq.tokens),
                 r.cached_tokens, r.cached_by_tier)
        return {"cached_tokens": r.cached_tokens, "cached_by_tier": r.cached_by_tier,
                "computed_tokens": r.computed_tokens, "seconds": r.seconds}

    def _extend(self, engine: Engine, sid: str, body: dict) -> dict:
        seq = self._seq(engine, sid, body.get("base"))
        fresh = not seq.tokens
        r = engine.restore(seq, _ints(body.get("ids")))  # computed by the next generate's steps
        if fresh:
            log.info("session %s opened: %d tokens, %d from cache %s", sid[:8], len(seq.tokens),
                     r.cached_tokens, r.cached_by_tier)
        return {"cached_tokens": r.cached_tokens, "cached_by_tier": r.cached_by_tier,
                "computed_tokens": r.computed_tokens, "seconds": r.seconds}

    def _truncate(self, engine: Engine, sid: str, body: dict) -> dict:
        seq = self._seq(engine, sid, None)
        engine.truncate(seq, int(body.get("n", 0)))
        return {"tokens": len(seq.tokens)}

    def _release(self, engine: Engine, sid: str, body: dict) -> dict:
        seq = self.worker.sessions.pop(sid, None)
        if seq is not None:
            engine.save_tail(seq)
            engine.release(seq)
            log.info("session %s released after %d tokens", sid[:8], len(seq.tokens))
        return {"ok": True}

    async def _generate(self, sid: str, body: dict, stream: Stream) -> None:
        base = body.get("base")
        await self._call(lambda e: self._seq(e, sid, base))
        gen = Generation(self.worker, [], self._params(body.get("sampling") or {}), session=sid)
        await gen.started()
        await stream.start()
        async for ev in gen.tokens():
            await stream.send(json.dumps({"token_id": ev.token_id, "text": ev.text,
                                          "finish_reason": ev.finish_reason}))
        u = gen.outcome.usage
        await stream.send(json.dumps({"done": gen.outcome.finish_reason, "usage": {
            "cached_tokens": u.cached_tokens, "ttft_s": u.ttft_s}}))
        await stream.end()

    def _params(self, s: dict[str, Any]) -> SamplingParams:
        spec = s.pop("constraint", None)
        try:
            return SamplingParams(**s, constraint=self._constraint(spec))
        except (InvalidSampling, TypeError) as e:
            raise HttpError(400, f"bad sampling: {e}") from e

    def _constraint(self, spec: dict[str, Any] | None):
        if not spec:
            return None
        tok, end = self.ctx.model.tokenizer, sorted(self.ctx.model.engine.stop_ids)
        if spec.get("kind") == "text_only":
            return text_only_constraint(tok, end)
        return tool_call_constraint(tok, spec["schemas"], required=bool(spec.get("required")),
                                    end_ids=end)


class _Conflict(ValueError):
    def __init__(self, have: int):
        super().__init__(f"the session holds {have} tokens")
        self.have = have


def _ints(values: Any) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise ValueError("token ids must be a list of integers")
    return values
