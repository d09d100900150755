"""Model backends behind one contract.

Files:
- base.py: ModelBackend and Conversation (the contract), GenParams, AppendResult, Reply.
- local.py: the local runtime (default); the conversation is one engine sequence.
- openai_compat.py: any OpenAI-compatible server (`--model openai:URL#MODEL`).
- resident.py: the resident server (`agent serve`) over its Unix socket; --server auto|off.
- scripted.py: replies from a list, for unit tests of the loop.
"""

from __future__ import annotations

from agent.backends.base import ModelBackend


def open_backend(spec: str | None, *, api_key_env: str | None = None,
                 server: str | None = None, **runtime_options) -> ModelBackend:
    """`openai:URL#MODEL` for a server (its key in `api_key_env`, default OPENAI_API_KEY);
    anything else is a local model spec, served by the resident server when `server`
    (auto|off, default per resident.default_mode) allows."""
    if spec and spec.startswith("openai:"):
        from agent.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(spec, api_key_env=api_key_env)
    from agent.backends.resident import connect, default_mode

    remote = connect(spec, default_mode(server), cache_dir=runtime_options.get("cache_dir"))
    if remote is not None:
        return remote
    from agent.backends.local import LocalBackend
    from runtime.local_model import LocalModel, RuntimeOptions

    return LocalBackend(LocalModel.open(spec, RuntimeOptions(**runtime_options,
                                                             constraints=True)))
