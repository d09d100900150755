"""`agent generate`: raw generation on the local runtime, for scripts and benchmarks."""

from __future__ import annotations

import argparse
import sys
import time

from cli.common import (
    EXIT_OK,
    UsageError,
    add_model_flags,
    model_options,
    out,
    out_json,
    resolve_dirs,
)
from server import cli as serve


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate text from a prompt (no tools, no session)",
        description="Generate from a prompt with the local runtime. --prompt is rendered with "
        "the model's chat template as one user message; --raw is tokenized as is.",
    )
    add_model_flags(p)
    serve.add_server_flag(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="a user message, rendered with the chat template "
                     "('-': stdin)")
    src.add_argument("--raw", help="text tokenized as is, no template ('-': stdin)")
    p.add_argument("--system", default=None, help="system message, with --prompt (default: none)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest; 0: all")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed (default: none, random)")
    p.add_argument("--stop", action="append", default=[],
                   help="stop string (repeatable; default: none)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: text, tokens, usage, timings")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="compute every token; do not read or write the KV cache on disk")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.engine.sampling import SamplingParams
    from runtime.local_model import LocalModel, RuntimeOptions

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            seed=args.seed, max_tokens=args.max_tokens, stop=tuple(args.stop))
    cache_dir = resolve_dirs(args).cache_dir
    # The resident server is started with one GPU: a split model is served here.
    here = args.no_prefix_cache or args.tensor_parallel > 1
    model = None if here else serve.remote_model(args.model, args.server, cache_dir)
    model = model or LocalModel.open(args.model, RuntimeOptions(
        **model_options(args), progress=sys.stderr.isatty(),
        prefix_cache=not args.no_prefix_cache, cache_dir=cache_dir))
    try:
        return _generate(model, args, params)
    finally:
        model.close()


def _generate(model, args: argparse.Namespace, params) -> int:
    ids = _prompt_ids(model, args)
    engine = model.engine
    seq = engine.new_sequence()
    extend = engine.extend(seq, ids)
    engine.save_tail(seq)  # a later run of the same prompt restores it exactly
    clock = _DecodeClock()
    tokens, pieces, finish = [], [], "stop"
    for event in engine.generate(seq, params):
        clock.tick()
        tokens.append(event.token_id)
        pieces.append(event.text)
        finish = event.finish_reason or finish
        if not args.json and event.text:
            out(event.text, end="")
    engine.release(seq)
    if not args.json:
        out()
        return EXIT_OK
    out_json(_report(model, ids, tokens, "".join(pieces), finish, extend, clock))
    return EXIT_OK


class _DecodeClock:
    """Token arrival times: the first token comes from the prefill's logits, the second pays
    for the first decode step (its kernels and graph, if not warmed up); steady state after."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    @property
    def total_s(self) -> float:
        return (self.times[-1] - self.start) if self.times else 0.0

    def report(self) -> dict:
        t = self.times
        out = {"decode_s": round(self.total_s, 4),
               "first_token_s": round(t[0] - self.start, 4) if t else 0.0,
               "first_step_s": round(t[1] - t[0], 4) if len(t) > 1 else 0.0}
        steady = len(t) - 2  # tokens after the second, over the time since it
        span = t[-1] - t[1] if len(t) > 2 else 0.0
        out["decode_tok_s"] = round(steady / span, 2) if span > 0 else 0.0
        out["steady_tokens"] = max(steady, 0)
        return out


def _read(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _prompt_ids(model, args: argparse.Namespace) -> list[int]:
    if args.raw is not None:
        return model.tokenizer.encode(_read(args.raw))
    if model.template is None:
        raise UsageError("this model has no chat template; use --raw")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": _read(args.prompt)})
    text = model.template.render(messages, add_generation_prompt=True)
    return model.tokenizer.encode(text)


def _report(model, ids, tokens, text, finish, extend, clock: _DecodeClock) -> dict:
    return {
        "model": model.name,
        "text": text,
        "tokens": tokens,
        "finish_reason": finish,
        "usage": {
            "prompt_tokens": len(ids),
            "completion_tokens": len(tokens),
            "cached_tokens": extend.cached_tokens,
            "cached_by_tier": extend.cached_by_tier,
            "computed_tokens": extend.computed_tokens,
        },
        "context": {"max_context": model.context_window,
                    "window": model.config.max_position_embeddings},
        "timings": {
            "load_s": round(model.load_s, 4),
            "warmup_s": round(model.warmup_s, 4),
            "restore_s": round(extend.restore_seconds, 4),
            "prefill_s": round(extend.seconds - extend.restore_seconds, 4),
            **clock.report(),
        },
    }
