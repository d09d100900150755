"""The model download, told to the user: a bar on a terminal, `progress` events in stream-json,
otherwise a line when it starts and one when it ends (a 98 MB pull is never silent)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.events import Progress


class DownloadReport:
    """Pulls the model a spec names when the cache lacks it, reporting as described above."""

    def __init__(self, emit: Callable[[Progress], None] | None, tty: bool,
                 err: Callable[[str], None]):
        self.emit, self.tty, self.err = emit, tty, err

    def ensure(self, spec: str, cache_dir: Path) -> None:
        """Download `spec` (the default model, a Hugging Face id) if it is not cached; local
        paths and servers are left to the loader (which names what is wrong with them)."""
        from runtime.errors import ModelNotFound
        from runtime.model_cache import pull, resolve_model

        if spec.startswith("openai:") or _is_path(spec):
            return
        try:
            resolve_model(spec, pull=False, cache_dir=cache_dir)
            return
        except ModelNotFound:
            pass
        self._started(spec)
        path = pull(spec, progress=self.tty, cache_dir=cache_dir)
        self._finished(spec, path)

    def _started(self, spec: str) -> None:
        if self.emit:
            self.emit(Progress("download", 0, 0, "bytes"))
        if not self.tty:
            self.err(f"downloading model {spec} into the model cache ...")

    def _finished(self, spec: str, path: Path) -> None:
        size = _size(path)
        if self.emit:
            self.emit(Progress("download", size, size, "bytes"))
        self.err(f"downloaded {spec}: {size / 1e6:.1f} MB in {path}")


def _is_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or Path(spec).exists()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
