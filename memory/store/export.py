"""A session as plain JSON-able data, for `agent sessions export` / `import` and for tests.

The export holds the session, all its events (superseded ones flagged), its token log as one
array per segment, its checkpoints and its sub-agents (each an export of its own).
`dumps_export` writes it indented but each segment on one line, so a 2K-token session is a few
kilobytes, not one id per line. `import_session`
writes an export into another store as a new session that `--resume` continues: the token log
and the events are the same, so the KV comes back from the disk tier where its pages are, and is
recomputed where they are not. Checkpoints stay behind (their commits live in the exporting
machine's repository).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memory.store.db import StoreError
from memory.store.schema import STORE_EVENT_KINDS

if TYPE_CHECKING:
    from memory.store.records import SessionInfo
    from memory.store.session_store import SessionStore

EXPORT_FORMAT = "resident-agent.session/2"
READABLE_FORMATS = ("resident-agent.session/1", EXPORT_FORMAT)


class BadExport(StoreError):
    """The file is not a session export this version can read."""


def export_session(store: SessionStore, session_id: str) -> dict[str, Any]:
    """The session, all its events (superseded ones flagged), its segments with their ids as
    lists, and its checkpoints; timestamps as ISO-8601 strings."""
    info = store.get(session_id)
    return {
        "format": EXPORT_FORMAT,
        "session": _plain(info),
        "events": [_plain(e) for e in store.events(info.id, include_superseded=True)],
        "segments": [_plain(s) for s in store.segments(info.id)],
        "checkpoints": [_plain(c) for c in store.checkpoints(info.id)],
        "subagents": [export_session(store, child.id) for child in store.subagents(info.id)],
    }


def dumps_export(data: dict[str, Any]) -> str:
    """The export as text: one line per event and per segment (its ids as one array)."""
    def rows(items: list[Any]) -> str:
        if not items:
            return "[]"
        lines = ",\n".join("  " + _compact(item) for item in items)
        return "[\n" + lines + "\n ]"

    parts = [f' "{key}": ' + (rows(value) if isinstance(value, list) else _compact(value))
             for key, value in data.items()]
    return "{\n" + ",\n".join(parts) + "\n}\n"


def import_session(store: SessionStore, data: dict[str, Any],
                   repo_root: str | Path | None = None, parent_id: str | None = None
                   ) -> SessionInfo:
    """Write an export into `store` as a new session (on `repo_root`, default the exported
    one), its sub-agents as its children; ids are new. Raises BadExport when `data` is not an
    export."""
    session = _checked(data)
    link = {"parent_id": parent_id, "fork_turn": session.get("fork_turn"),
            "parent_call_id": session.get("parent_call_id")} if parent_id else {}
    info = store.create_session(repo_root or session["repo_root"], session["model"],
                                session["model_fingerprint"], session.get("title"), **link)
    try:
        for _, write in sorted(_writes(store, info.id, data), key=lambda w: w[0]):
            write()
        for child in data.get("subagents") or []:
            import_session(store, child, repo_root, parent_id=info.id)
        store.set_status(info.id, "finished")
    except (KeyError, TypeError, ValueError, BadExport) as e:
        store.delete(info.id)
        raise BadExport(f"the export is damaged ({type(e).__name__}: {e}); nothing imported") \
            from e
    finally:
        store.release_lock(info.id)
    return store.get(info.id)


def _checked(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BadExport(f"not a session export (format {found!r}; expected one of "
                        f"{', '.join(READABLE_FORMATS)})")
    session = data.get("session")
    if not isinstance(session, dict) or not all(
            k in session for k in ("repo_root", "model", "model_fingerprint")):
        raise BadExport("the export has no session record; nothing imported")
    if not isinstance(data.get("events"), list) or not isinstance(data.get("segments"), list):
        raise BadExport("the export has no events or segments; nothing imported")
    return session


def _writes(store: SessionStore, session_id: str, data: dict[str, Any]):
    """(turn, write) for each live event and each segment: the store takes them turn by turn
    (a turn never goes back), in their order within a turn. Superseded events (a rewind went
    back before them) and the store's own kinds are left out, as a resume leaves them out."""
    for e in data["events"]:
        if e.get("superseded") or e["kind"] in STORE_EVENT_KINDS:
            continue
        turn, kind, payload = int(e["turn"]), str(e["kind"]), dict(e["payload"])
        yield turn, lambda t=turn, k=kind, p=payload: store.append_event(session_id, t, k, p)
    for seg in data["segments"]:
        turn, kind, text = int(seg["turn"]), str(seg["kind"]), seg.get("text")
        ids = [int(i) for i in seg["ids"]]
        yield turn, lambda t=turn, k=kind, i=ids, x=text: store.append_tokens(
            session_id, t, k, i, x)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _plain(record: Any) -> dict[str, Any]:
    out = dataclasses.asdict(record)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, tuple):
            out[key] = list(value)
    return out
