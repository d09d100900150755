"""`agent sessions list|show|delete|export`: the session store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.checkpoint import delete_session_checkpoints
from cli.common import EXIT_OK, apply_dirs, out, out_json
from cli.run import add_session_flags, open_store


def register(sub) -> None:
    p = sub.add_parser("sessions", help="list, show, delete or export saved sessions")
    add_session_flags(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="sessions, newest first")
    ls.add_argument("--repo", default=None, help="only sessions of this repository")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    for name, func, help_ in [("show", run_show, "a session's conversation"),
                              ("delete", run_delete, "delete a session"),
                              ("export", run_export, "a session as JSON")]:
        a = actions.add_parser(name, help=help_)
        a.add_argument("id", help="session id or a unique prefix")
        if name == "show":
            a.add_argument("--json", action="store_true")
        if name == "export":
            a.add_argument("-o", "--output", default=None, help="write here instead of stdout")
        a.set_defaults(func=func)


def _summary(s) -> dict:
    return {"id": s.id, "title": s.title, "repo": s.repo_root, "model": s.model,
            "turns": s.turn_count, "tokens": s.n_tokens, "status": s.status,
            "updated_at": s.updated_at.isoformat()}


def run_list(args: argparse.Namespace) -> int:
    apply_dirs(args)
    repo = str(Path(args.repo).resolve()) if args.repo else None
    sessions = open_store().list_sessions(repo_root=repo, limit=args.limit)
    if args.json:
        out_json([_summary(s) for s in sessions])
        return EXIT_OK
    if not sessions:
        out("no sessions yet; start one with: agent run --repo . \"your task\"")
    for s in sessions:
        when = s.updated_at.strftime("%Y-%m-%d %H:%M")
        out(f"{s.id}  {when}  {s.turn_count:3d} turns  {s.n_tokens:7d} tok  "
            f"{s.status:11s} {(s.title or '')[:60]}")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    apply_dirs(args)
    store = open_store()
    info = store.get(args.id)
    events = store.events(info.id)
    if args.json:
        out_json({"session": _summary(info),
                  "events": [{"turn": e.turn, "kind": e.kind, "payload": e.payload}
                             for e in events]})
        return EXIT_OK
    out(f"session {info.id}  {info.repo_root}  model {info.model}")
    for e in events:
        p = e.payload
        if e.kind == "message_added" and p.get("role") not in ("system", "tool"):
            out(f"\n[{e.turn}] {p['role']}: {p.get('content', '')}")
        elif e.kind == "tool_finished":
            out(f"[{e.turn}] tool {p.get('name')}: {'ok' if p.get('ok') else 'failed'}")
        elif e.kind == "turn_finished" and p.get("status") != "done":
            out(f"[{e.turn}] turn ended: {p.get('status')}")
        elif e.kind == "note":
            out(f"[{e.turn}] note: {p.get('text', '').splitlines()[0] if p.get('text') else ''}")
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    apply_dirs(args)
    store = open_store()
    info = store.get(args.id)
    store.delete(info.id)
    delete_session_checkpoints(info.repo_root, info.id)
    out(f"deleted {info.id}")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    apply_dirs(args)
    store = open_store()
    data = store.export(store.get(args.id).id)
    text = json.dumps(data, ensure_ascii=False, indent=2, default=str)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        out(text)
    return EXIT_OK
