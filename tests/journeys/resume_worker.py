"""A process of its own for the resume matrix: `python -m tests.journeys.resume_worker MODE ...`.

resume TEMPLATE GGUF JOBS_JSON: resume each job's session for one more turn; print one JSON line
    per job: status, tokens restored and served from cache, which expected texts the model saw,
    and the notes shown.
hang TEMPLATE GGUF REPO: start a session whose reply is slow; print its id once the turn runs
    (the caller kills this process there).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from agent.events import Error, Note, Progress, SessionStarted, Shutdown, TurnFinished, UserInput
from agent.session import AgentSession, SessionOptions
from memory.store import SessionStore
from runtime import settings
from tests.journeys.scripted_local import SLOW, ScriptedLocalBackend


def resume(template: str, gguf: str, jobs: list[dict]) -> None:
    backend = ScriptedLocalBackend.open(Path(gguf), template, [])
    store = SessionStore(settings.data_dir())
    for job in jobs:
        seen: list[str] = []

        def answer(messages, seen=seen):
            seen.extend(f"{m['role']}: {m['content']}" for m in messages)
            return "resumed and answered."

        backend.script = [answer]
        session = AgentSession(backend, Path(job["repo"]), store, resume_id=job["session_id"],
                               options=SessionOptions(permission_mode="auto"))
        session.submit(UserInput("and now?"))
        session.submit(Shutdown())
        print(json.dumps({"case": job["case"], **_outcome(session, seen, job["expect"])}),
              flush=True)
    backend.close()


def _outcome(session: AgentSession, seen: list[str], expect: list[str]) -> dict:
    restored, status, cached, notes = 0, "", 0, []
    for event in events_of(session):
        if isinstance(event, Progress) and event.kind == "restore":
            restored = event.total
        elif isinstance(event, TurnFinished):
            status, cached = event.status, event.usage.cached_input_tokens
        elif isinstance(event, Note):
            notes.append(event.text)
        elif isinstance(event, Error):
            notes.append(f"error: {event.message}")
    text = "\n".join(seen)
    return {"status": status, "restored": restored, "cached": cached, "notes": notes,
            "found": {e: e in text for e in expect}}


def events_of(session: AgentSession):
    """Every event of the session until it has closed and nothing is left."""
    while True:
        event = session.next_event(0.1)
        if event is None and session.closed:
            event = session.next_event(0)
            if event is None:
                return
        if event is not None:
            yield event


def hang(template: str, gguf: str, repo: str) -> None:
    backend = ScriptedLocalBackend.open(Path(gguf), template, [SLOW + "word " * 400])
    session = AgentSession(backend, Path(repo), SessionStore(settings.data_dir()),
                           options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("take your time"))
    while True:
        event = session.next_event(1)
        if isinstance(event, SessionStarted):
            sid = event.session_id
        if event is not None and type(event).__name__ == "TokenDelta":
            print(sid, flush=True)
            time.sleep(600)


if __name__ == "__main__":
    mode, template, gguf, arg = sys.argv[1:5]
    if mode == "resume":
        resume(template, gguf, json.loads(arg))
    else:
        hang(template, gguf, arg)
