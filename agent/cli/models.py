"""`agent models list|pull`: the model cache."""

from __future__ import annotations

import argparse
import sys

from agent.cli.common import EXIT_OK, apply_dirs, out, out_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list or pull models in the cache")
    p.add_argument("--cache-dir", default=None, help="models live here (env AGENT_CACHE_DIR)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="models in the cache")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    pull = actions.add_parser("pull", help="download a model into the cache")
    pull.add_argument("name", nargs="?", default="smollm2",
                      help="'smollm2' (default) or a Hugging Face id")
    pull.set_defaults(func=run_pull)


def run_list(args: argparse.Namespace) -> int:
    from runtime.model_cache import list_models

    apply_dirs(args)
    entries = list_models()
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

    apply_dirs(args)
    path = pull(args.name, progress=sys.stderr.isatty())
    out(str(path))
    return EXIT_OK
