"""After a token is sampled: append it, check stops and constraints, stream the safe text.

Host-side bookkeeping of one request, shared by every decode row of `Engine.step()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.engine.scheduler import Request


@dataclass
class StreamEvent:
    """One generated token, the text it completed (may be empty), and why generation ended."""

    token_id: int
    text: str
    finish_reason: str | None = None


def postprocess(req: Request, token: int) -> StreamEvent:
    """Append `token` to the request's sequence and decide whether the request is finished."""
    req.seq.tokens.append(token)
    req.seq.last_logits = None
    req.generated.append(token)
    constraint = req.params.constraint
    if constraint is not None:
        constraint.advance(token)
    if token in req.stop_ids:
        req.finish_reason = "stop"
    else:
        req.text += req.decoder.push(token) if req.decoder else ""
        _apply_stop_strings(req)
        if constraint is not None and constraint.finished():
            req.finish_reason = "stop"
    if not req.finished and len(req.generated) >= req.params.max_tokens:
        req.finish_reason = "length"
    if not req.finished and len(req.seq.tokens) >= req.max_len:
        req.finish_reason = "context"
    if req.finished and req.decoder and req.finish_reason != "stop":
        req.text += req.decoder.flush()
        _apply_stop_strings(req)
    return StreamEvent(token, _take_safe_text(req), req.finish_reason)


def may_continue(req: Request) -> bool:
    """False if the next token ends the request by length or context, whatever it is."""
    return (len(req.generated) + 1 < req.params.max_tokens
            and len(req.seq.tokens) + 1 < req.max_len)


def stream_decoder(tokenizer):
    """A StreamDecoder over `tokenizer`, or None for token-only engines (tests)."""
    if tokenizer is None:
        return None
    from runtime.detokenizer import StreamDecoder

    return StreamDecoder(tokenizer)


class HostCopy:
    """A device tensor's values on the host, copied without blocking until `wait()`."""

    def __init__(self, values: torch.Tensor):
        self._event = None
        if values.is_cuda:
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = values

    def wait(self) -> list[int]:
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


def _apply_stop_strings(req: Request) -> None:
    for stop in req.params.stop:
        cut = req.text.find(stop)
        if cut >= 0:
            req.text = req.text[:cut]
            req.finish_reason = "stop"


def _take_safe_text(req: Request) -> str:
    """New text, holding back a tail that could still grow into a stop string."""
    end = len(req.text)
    if not req.finished:
        for stop in req.params.stop:
            for k in range(min(len(stop) - 1, len(req.text)), 0, -1):
                if req.text.endswith(stop[:k]):
                    end = min(end, len(req.text) - k)
                    break
    end = max(end, req.emitted)
    out = req.text[req.emitted : end]
    req.emitted = end
    return out
