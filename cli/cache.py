"""`agent cache stats|gc|clear`: the KV pages on disk."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from cli.common import EXIT_OK, Dirs, UsageError, out, out_json, resolve_dirs

CACHE_DIR_HELP = ("models and KV pages live here (default: AGENT_CACHE_DIR, the config file, "
                  "the platform's cache dir)")


def register(sub) -> None:
    p = sub.add_parser("cache", help="inspect or trim the KV cache on disk",
                       description="The KV pages on disk, shared by every session and model "
                       "(each model's pages under its fingerprint).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    st = actions.add_parser("stats", help="pages and bytes per model, hit rates")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=run_stats)
    gc = actions.add_parser("gc", help="delete least recently used pages down to a size")
    gc.add_argument("--max-bytes", required=True, help="e.g. 500M, 20G, or a byte count")
    gc.add_argument("--json", action="store_true", help="one JSON object")
    gc.set_defaults(func=run_gc)
    cl = actions.add_parser("clear", help="delete every KV page on disk")
    cl.set_defaults(func=run_clear)
    for q in (p, st, gc, cl):
        q.add_argument("--cache-dir", default=None if q is p else argparse.SUPPRESS,
                       help=CACHE_DIR_HELP)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise UsageError(f"cannot read size {text!r}; use a number with K, M, G or T")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_"))


def _kv_root(dirs: Dirs) -> Path:
    return dirs.cache_dir / "kv"


def _tier(dirs: Dirs):
    from memory.disk_tier import DiskTier

    # A tier for no model in particular: stats, gc and clear act on every fingerprint.
    return DiskTier(dirs.cache_dir, bytes(32), 0)


def run_stats(args: argparse.Namespace) -> int:
    from memory.cache_usage import load_usage

    dirs = resolve_dirs(args)
    root = _kv_root(dirs)
    models = []
    for d in sorted(p for p in root.glob("*") if p.is_dir()):
        files = list(d.rglob("*.page"))
        models.append({"fingerprint": d.name, "pages": len(files),
                       "bytes": sum(f.stat().st_size for f in files)})
    usage = load_usage(dirs.cache_dir)
    hits = usage["hit_device"] + usage["hit_host"] + usage["hit_disk"]
    looked = hits + usage["miss_pages"]
    result = {"dir": str(root), "disk": {"pages": sum(m["pages"] for m in models),
                                         "bytes": sum(m["bytes"] for m in models)},
              "models": models, "lookups": usage,
              "hit_rate": round(hits / looked, 4) if looked else None,
              "hit_rate_by_tier": {t: round(usage[f"hit_{t}"] / looked, 4) if looked else None
                                   for t in ("device", "host", "disk")}}
    if args.json:
        out_json(result)
        return EXIT_OK
    out(f"KV cache {root}")
    out(f"  disk: {result['disk']['pages']} pages, {result['disk']['bytes'] / 1e6:.1f} MB")
    for m in models:
        out(f"    model {m['fingerprint']}: {m['pages']} pages, {m['bytes'] / 1e6:.1f} MB")
    if looked:
        by = result["hit_rate_by_tier"]
        out(f"  page lookups: {looked}, hit rate {result['hit_rate']:.1%} "
            f"(device {by['device']:.1%}, host {by['host']:.1%}, disk {by['disk']:.1%})")
    else:
        out("  no lookups recorded yet")
    out("  device and host tiers live only inside a running agent")
    return EXIT_OK


def run_gc(args: argparse.Namespace) -> int:
    limit = parse_size(args.max_bytes)
    result = _tier(resolve_dirs(args)).gc(limit)
    if args.json:
        out_json({"removed_files": result.removed_files, "removed_bytes": result.removed_bytes,
                  "remaining_bytes": result.remaining_bytes})
    else:
        out(f"removed {result.removed_files} files ({result.removed_bytes / 1e6:.1f} MB); "
            f"{result.remaining_bytes / 1e6:.1f} MB remain")
    return EXIT_OK


def run_clear(args: argparse.Namespace) -> int:
    dirs = resolve_dirs(args)
    tier = _tier(dirs)
    before = tier.stats()
    tier.clear(all_models=True)
    out(f"cleared {before.files} pages ({before.bytes / 1e6:.1f} MB) from {_kv_root(dirs)}")
    return EXIT_OK
