"""Model backends behind one contract.

Files:
- base.py: ModelBackend and Conversation (the contract), GenParams, AppendResult, Reply.
- local.py: the local runtime (default); the conversation is one engine sequence.
- openai_compat.py: any OpenAI-compatible server (`--model openai:URL#MODEL`).
- scripted.py: replies from a list, for unit tests of the loop.
"""

from __future__ import annotations

from agent.backends.base import ModelBackend


def open_backend(spec: str | None, *, api_key_env: str | None = None,
                 **runtime_options) -> ModelBackend:
    """`openai:URL#MODEL` for a server (its key in `api_key_env`, default OPENAI_API_KEY);
    anything else is a local model spec."""
    if spec and spec.startswith("openai:"):
        from agent.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(spec, api_key_env=api_key_env)
    from agent.backends.local import LocalBackend
    from runtime.local_model import LocalModel, RuntimeOptions

    return LocalBackend(LocalModel.open(spec, RuntimeOptions(**runtime_options)))
