"""What the session store hands out (frozen dataclasses) and the codecs between them and rows."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Row

from memory.store.db import StoreError
from memory.store.schema import TOKEN_BYTES, TOKEN_DTYPE

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class SessionInfo:
    """A session and its summary: `turn_count` is the highest turn recorded, `n_tokens` the
    length of its token log, `updated_at` its last activity. A fork has `parent_id` and
    `fork_turn`; a sub-agent also `parent_call_id`, the parent's tool call that started it."""

    id: str
    repo_root: str
    model: str
    model_fingerprint: str
    title: str | None
    status: str
    parent_id: str | None
    turn_count: int
    n_tokens: int
    created_at: datetime
    updated_at: datetime
    fork_turn: int | None = None
    parent_call_id: str | None = None

    @property
    def is_subagent(self) -> bool:
        return self.parent_call_id is not None


@dataclass(frozen=True)
class Event:
    """One entry of the event log. `superseded`: a later rewind went back before its turn."""

    id: int
    session_id: str
    turn: int
    seq: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    superseded: bool = False


@dataclass(frozen=True)
class Segment:
    """A run of token ids of one kind within one turn (`ids` is empty when not asked for)."""

    session_id: str
    index: int
    turn: int
    kind: str
    n_tokens: int
    text: str | None
    ids: tuple[int, ...]
    created_at: datetime


@dataclass(frozen=True)
class Checkpoint:
    """The code as it stood at `turn` (the agent takes it as the turn starts), as a git commit
    and optionally the ref that keeps it alive."""

    id: int
    session_id: str
    turn: int
    commit: str
    ref: str | None
    created_at: datetime


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_session_id(now: datetime) -> str:
    """A short id that sorts by creation time (UTC, to the second): `20261128-114501-ab12`."""
    return f"{now.astimezone(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def normalize_repo_root(repo_root: str | Path) -> str:
    """The form repo roots are stored and matched in: absolute, symlinks resolved."""
    return str(Path(repo_root).expanduser().resolve())


def dump_payload(payload: dict[str, Any]) -> str:
    """An event payload as compact JSON; raises ValueError for anything JSON cannot carry."""
    if not isinstance(payload, dict):
        raise ValueError(f"an event payload must be a dict, not {type(payload).__name__}")
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"event payload is not JSON-serialisable: {e}") from e


def encode_tokens(ids: Sequence[int] | np.ndarray) -> bytes:
    """Token ids as a BLOB of little-endian int32; raises ValueError if any is out of range."""
    array = np.asarray(ids)
    if array.size == 0:
        return b""  # a turn that produced nothing is still a fact worth keeping
    if array.ndim != 1:
        raise ValueError(f"a token segment needs a flat list of ids, not shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {array.dtype}")
    if int(array.min()) < 0 or int(array.max()) > INT32_MAX:
        raise ValueError(f"token ids must lie in [0, 2**31), got {array.min()}..{array.max()}")
    return array.astype(TOKEN_DTYPE, copy=False).tobytes()


def decode_tokens(blobs: Sequence[bytes], n_tokens: int) -> np.ndarray:
    """Concatenate token BLOBs into one int32 array, checking the total length."""
    data = b"".join(blobs)
    if len(data) != n_tokens * TOKEN_BYTES:
        raise StoreError(
            f"token segments hold {len(data)} bytes where {n_tokens} tokens need "
            f"{n_tokens * TOKEN_BYTES}: the session is corrupt; delete or fork it before the damage"
        )
    return np.frombuffer(data, dtype=TOKEN_DTYPE)


def session_info(row: Row[Any]) -> SessionInfo:
    return SessionInfo(**row._mapping)


def event(row: Row[Any]) -> Event:
    m = row._mapping
    return Event(
        id=m["id"],
        session_id=m["session_id"],
        turn=m["turn"],
        seq=m["seq"],
        kind=m["kind"],
        payload=json.loads(m["payload"]),
        created_at=m["created_at"],
        superseded=bool(m["superseded"]),
    )


def segment(row: Row[Any], with_ids: bool) -> Segment:
    m = row._mapping
    ids = tuple(decode_tokens([m["tokens"]], m["n_tokens"]).tolist()) if with_ids else ()
    return Segment(
        session_id=m["session_id"],
        index=m["idx"],
        turn=m["turn"],
        kind=m["kind"],
        n_tokens=m["n_tokens"],
        text=m["text"],
        ids=ids,
        created_at=m["created_at"],
    )


def checkpoint(row: Row[Any]) -> Checkpoint:
    m = row._mapping
    return Checkpoint(
        id=m["id"],
        session_id=m["session_id"],
        turn=m["turn"],
        commit=m["commit_sha"],
        ref=m["ref"],
        created_at=m["created_at"],
    )
