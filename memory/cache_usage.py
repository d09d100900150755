"""Cumulative KV cache hit and miss counts across processes, for `agent cache stats`."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
COUNTERS = ("hit_device", "hit_host", "hit_disk", "miss_pages")


def usage_path(cache_root: Path) -> Path:
    return Path(cache_root) / "kv" / "usage.json"


def record_usage(cache_root: Path, counts: dict[str, int]) -> None:
    """Add this process's page hit/miss counts to the totals (locked; never raises)."""
    path = usage_path(cache_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            totals = load_usage(cache_root)
            for key in COUNTERS:
                totals[key] = totals.get(key, 0) + int(counts.get(key, 0))
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(totals))
            os.replace(tmp, path)
    except OSError as e:
        log.warning("could not record KV cache usage in %s: %s", path, e)


def load_usage(cache_root: Path) -> dict[str, int]:
    """The totals so far (zeros when nothing was recorded or the file is unreadable)."""
    try:
        data = json.loads(usage_path(cache_root).read_text())
        return {k: int(data.get(k, 0)) for k in COUNTERS}
    except (OSError, ValueError):
        return dict.fromkeys(COUNTERS, 0)
