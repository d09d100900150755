"""Files changed outside the agent between turns, appended as a factual note with the diff.

watchfiles says *whether* something changed while no turn ran; a worktree snapshot taken at the
end of each turn (a commit under a private `.seen` checkpoint ref) says exactly *what*, so the
note carries a real diff. Nothing earlier in the context is edited: the note is appended.
Files a read deny rule covers are left out of the diff.

The watcher thread restarts when watchfiles fails (it cannot decode a file name that is not
UTF-8, say), treating that moment as "anything may have changed"; after `MAX_RESTARTS` failures
it stops with one warning and every note falls back to a diff of the whole worktree.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from agent.checkpoint import Checkpoint, CheckpointError, Checkpoints
from agent.tools.base import ReadPolicy

log = logging.getLogger(__name__)
MAX_NOTE_CHARS = 20_000
MAX_RESTARTS = 5
RESTART_DELAY_S = 0.2


class ExternalChanges:
    """Watches a repository between turns; `note()` describes what changed since the last."""

    def __init__(self, root: Path, session: str, read_policy: ReadPolicy | None = None):
        self.root = root
        self._policy = read_policy  # read deny rules: those files' diffs stay out of the note
        self._seen = _checkpoints(root, f"{session}.seen")
        self._last: Checkpoint | None = None
        self._dirty: set[str] = set()
        self.degraded = False  # the watcher gave up: every note diffs the whole worktree
        self._in_turn = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watch-repo", daemon=True)

    def start(self, resumed: bool = False) -> None:
        """Remember the worktree as the model knows it (a resumed session keeps its last
        snapshot, so what changed while it slept is noted), then watch."""
        if resumed and self._seen is not None:
            try:
                self._last = self._seen.get(0)
                self._dirty.add("")  # "" = every path
            except CheckpointError:
                self.mark_seen()
        else:
            self.mark_seen()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def turn_started(self) -> None:
        self._in_turn.set()

    def turn_finished(self) -> None:
        """The agent's own changes are now known to the model: snapshot them as seen."""
        self.mark_seen()
        self._in_turn.clear()

    def mark_seen(self) -> None:
        if self._seen is None:
            return
        try:
            self._last = self._seen.create(0)
        except CheckpointError as e:
            log.info("cannot snapshot the worktree: %s", e)
        self._dirty.clear()

    def note(self) -> str | None:
        """The diff of what changed outside the agent since the last turn, or None."""
        if self.degraded:
            self._dirty.add("")
        if not self._dirty:
            return None
        paths = [] if "" in self._dirty else sorted(self._dirty)
        diff = self._diff(paths) if self._seen and self._last else ""
        self.mark_seen()
        if not diff.strip():
            return None if self._seen or not paths else "Changed: " + ", ".join(paths)
        if len(diff) > MAX_NOTE_CHARS:
            diff = diff[:MAX_NOTE_CHARS] + f"\n[... diff cut at {MAX_NOTE_CHARS} chars ...]\n"
        return f"[note] Files changed outside the agent since the last turn:\n{diff}"

    def _diff(self, paths: list[str]) -> str:
        now = self._seen.create(1)
        denied = self._policy.denied_read_patterns() if self._policy else []
        specs = [f":(literal){p}" for p in paths] or ["."]
        specs += [f":(exclude){p}" for p in denied]
        return self._seen.diff(self._last, now, specs)

    def _watch(self) -> None:
        try:
            from watchfiles import DefaultFilter, watch
        except ImportError:
            log.warning("watchfiles is not installed: outside changes are not noticed")
            return
        flt = DefaultFilter(ignore_dirs=(*DefaultFilter.ignore_dirs, ".git"))
        for attempt in range(MAX_RESTARTS + 1):
            try:
                for changes in watch(self.root, watch_filter=flt, stop_event=self._stop,
                                     rust_timeout=500, yield_on_timeout=False):
                    if not self._in_turn.is_set():
                        self._dirty.update(_relative(self.root, p) for _, p in changes)
                return  # stopped
            except Exception as e:  # noqa: BLE001 - watchfiles raises its own internal errors
                self._dirty.add("")  # what it failed on is lost: diff everything next time
                if attempt == MAX_RESTARTS:
                    self.degraded = True
                    log.warning("the file watcher keeps failing (%s); changes outside the agent "
                                "are now found by diffing the whole worktree each turn",
                                _first_line(e))
                    return
                log.info("file watcher failed (%s); restarting", _first_line(e))
                if self._stop.wait(RESTART_DELAY_S):
                    return


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _checkpoints(root: Path, session: str) -> Checkpoints | None:
    try:
        return Checkpoints(root, session)
    except CheckpointError:
        return None  # not a git repository: paths only, no diff


def _relative(root: Path, path: str) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return path
