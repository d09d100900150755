"""`agent models list|pull`: the model cache."""

from __future__ import annotations

import argparse
import sys

from cli.cache import CACHE_DIR_HELP
from cli.common import EXIT_OK, add_model_flags, model_options, out, out_json, resolve_dirs


def register(sub) -> None:
    p = sub.add_parser("models", help="list, pull or plan models in the cache",
                       description="The model cache: the embedded default, pulled Hugging Face "
                       "models and GGUF files.")
    p.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="models in the cache")
    ls.add_argument("--json", action="store_true", help="one JSON array")
    ls.add_argument("--cache-dir", default=argparse.SUPPRESS, help=CACHE_DIR_HELP)
    ls.set_defaults(func=run_list)
    pull = actions.add_parser("pull", help="download a model into the cache")
    pull.add_argument("name", nargs="?", default="smollm2",
                      help="'smollm2' or a Hugging Face id")
    pull.add_argument("--cache-dir", default=argparse.SUPPRESS, help=CACHE_DIR_HELP)
    pull.set_defaults(func=run_pull)
    info = actions.add_parser(
        "info", help="the memory plan for a model: weights, KV per token, tiers, context",
        description="Load the model and print the memory plan a session would get (weights, "
        "KV bytes per token, pages and bytes per tier, the context a session may grow to), "
        "without starting a session. Takes the same memory flags as `agent run`.")
    info.add_argument("name", nargs="?", default=None,
                      help="model spec (default: --model, AGENT_MODEL, or smollm2)")
    add_model_flags(info, cache_dir_default=argparse.SUPPRESS)
    info.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    info.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    from runtime.model_cache import list_models

    entries = list_models(resolve_dirs(args).cache_dir)
    if args.json:
        out_json([{"name": e.name, "path": str(e.path), "format": e.format, "bytes": e.size}
                  for e in entries])
        return EXIT_OK
    if not entries:
        out("no models in the cache; `agent models pull` fetches the default (smollm2)")
    for e in entries:
        out(f"{e.name:40s} {e.format:5s} {e.size / 1e6:9.1f} MB  {e.path}")
    return EXIT_OK


def run_pull(args: argparse.Namespace) -> int:
    from runtime.model_cache import pull

    path = pull(args.name, progress=sys.stderr.isatty(), cache_dir=resolve_dirs(args).cache_dir)
    out(str(path))
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    from runtime.local_model import LocalModel, RuntimeOptions

    spec = args.name or args.model
    options = RuntimeOptions(**model_options(args), warmup=False, progress=sys.stderr.isatty(),
                             cache_dir=resolve_dirs(args).cache_dir)
    model = LocalModel.open(spec, options)
    try:
        plan = model.plan
        if args.json:
            out_json({"model": model.name, "path": str(model.path),
                      "dtype": str(model.dtype).removeprefix("torch."), **plan.to_dict()})
            return EXIT_OK
        out(f"model        {model.name} ({model.path})")
        out(f"dtype        {str(model.dtype).removeprefix('torch.')}")
        for line in plan.lines():
            out(line)
        return EXIT_OK
    finally:
        model.close()
