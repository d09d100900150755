"""The resident runtime: one loaded model and its KV tiers for every session and client.

Files:
- resident.py: ResidentServer (listeners, engine worker, graceful shutdown) and ServeOptions.
- engine_worker.py: EngineWorker, the one thread driving Engine.step(); Job, Usage, Busy.
- app.py: ServerContext (model, renderer, metrics, stabiliser) and the Router.
- http.py: a small asyncio HTTP/1.1 layer (keep-alive, chunked SSE, limits, errors).
- openai_api.py: /v1/chat/completions, /v1/completions, /v1/models.
- anthropic_api.py: /v1/messages.
- sessions_api.py: the resident-session API of the agent's own client (Unix socket).
- generation.py: one generation as handlers see it; sampling fields; tool-call streaming.
- prompts.py: API messages to token ids (chat template, tools), replies back to calls.
- stabilize.py: prefix stabilisation (billing nonces, dates) and the divergence tracker.
- metrics.py: Prometheus counters (requests, tokens, TTFT, cache hits by tier).
- cli.py: `agent serve` and the socket path.
"""
