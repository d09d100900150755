"""`agent sessions list|show|delete|export|import`: the session store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.checkpoint import delete_session_checkpoints
from cli.common import EXIT_OK, out, out_json, resolve_dirs
from cli.session_factory import add_data_dir_flag
from cli.session_factory import open_store as _open_store


def register(sub) -> None:
    p = sub.add_parser("sessions", help="list, show, delete, export or import saved sessions",
                       description="The session store: every session's events, token log and "
                       "checkpoints.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="sessions, newest first")
    ls.add_argument("--repo", default=None, help="only sessions of this repository "
                    "(default: all)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many")
    ls.add_argument("--json", action="store_true", help="one JSON array")
    ls.set_defaults(func=run_list)
    parsers = [p, ls]
    for name, func, help_ in [("show", run_show, "a session's conversation"),
                              ("delete", run_delete, "delete a session"),
                              ("export", run_export, "a session as JSON (import it elsewhere "
                               "with `agent sessions import`)")]:
        a = actions.add_parser(name, help=help_)
        a.add_argument("id", help="session id or a unique prefix")
        if name == "show":
            a.add_argument("--json", action="store_true", help="its events as JSON")
        if name == "export":
            a.add_argument("-o", "--output", default=None,
                           help="write here (default: stdout)")
        a.set_defaults(func=func)
        parsers.append(a)
    parsers.append(register_import(actions))
    for q in parsers:
        add_data_dir_flag(q, default=None if q is p else argparse.SUPPRESS)


def open_store(args: argparse.Namespace):
    return _open_store(resolve_dirs(args).data_dir)


def _summary(s) -> dict:
    out = {"id": s.id, "title": s.title, "repo": s.repo_root, "model": s.model,
           "turns": s.turn_count, "tokens": s.n_tokens, "status": s.status,
           "updated_at": s.updated_at.isoformat()}
    if s.is_subagent:
        out.update(parent_id=s.parent_id, fork_turn=s.fork_turn, parent_call_id=s.parent_call_id)
    return out


def run_list(args: argparse.Namespace) -> int:
    repo = str(Path(args.repo).resolve()) if args.repo else None
    sessions = open_store(args).list_sessions(repo_root=repo, limit=args.limit)
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
    store = open_store(args)
    info = store.get(args.id)
    events = store.events(info.id)
    children = {c.id: c for c in store.subagents(info.id)}
    if args.json:
        out_json({"session": _summary(info), "events": [_event(e) for e in events],
                  "subagents": [{"session": _summary(c), "events": [
                      _event(e) for e in _own_events(store, c)]} for c in children.values()]})
        return EXIT_OK
    out(f"session {info.id}  {info.repo_root}  model {info.model}")
    for e in events:
        _show_event(e)
        child = children.get(e.payload.get("agent_id")) if e.kind == "subagent_finished" \
            else None
        if child is not None:
            _show_subagent(store, child, e.payload)
    return EXIT_OK


def _event(e) -> dict:
    return {"turn": e.turn, "kind": e.kind, "payload": e.payload}


def _own_events(store, child) -> list:
    """A sub-agent's events after its fork (those before are its parent's, copied)."""
    return [e for e in store.events(child.id) if e.turn > (child.fork_turn or 0)]


def _show_subagent(store, child, finished: dict) -> None:
    usage = finished.get("usage") or {}
    out(f"  sub-agent {child.id} ({child.title or ''}), from {child.parent_call_id} at turn "
        f"{child.fork_turn}: {child.status}; {finished.get('shared_tokens', 0)} tokens shared, "
        f"{usage.get('computed_tokens', 0)} computed, {usage.get('output_tokens', 0)} generated")
    for e in _own_events(store, child):
        _show_event(e, indent="    ")


def _show_event(e, indent: str = "") -> None:
    p = e.payload
    if e.kind == "message_added" and p.get("role") not in ("system", "tool"):
        out(f"\n{indent}[{e.turn}] {p['role']}: {p.get('content', '')}")
    elif e.kind == "tool_finished":
        out(f"{indent}[{e.turn}] tool {p.get('name')}: {'ok' if p.get('ok') else 'failed'}")
    elif e.kind == "turn_finished" and p.get("status") != "done":
        out(f"{indent}[{e.turn}] turn ended: {p.get('status')}")
    elif e.kind == "note":
        out(f"{indent}[{e.turn}] note: "
            f"{p.get('text', '').splitlines()[0] if p.get('text') else ''}")


def run_delete(args: argparse.Namespace) -> int:
    store = open_store(args)
    info = store.get(args.id)
    store.delete(info.id)
    delete_session_checkpoints(info.repo_root, info.id)
    out(f"deleted {info.id}")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from memory.store.export import dumps_export

    store = open_store(args)
    text = dumps_export(store.export(store.get(args.id).id))
    if args.output:
        Path(args.output).write_text(text)
    else:
        out(text, end="")
    return EXIT_OK


def register_import(actions) -> argparse.ArgumentParser:
    a = actions.add_parser("import", help="a session exported elsewhere, as a new session "
                           "here (resume it with --resume ID)")
    a.add_argument("file", help="the export ('-': stdin)")
    a.add_argument("--repo", default=None,
                   help="the repository it works on here (default: the exported path)")
    a.add_argument("--json", action="store_true", help="print the new session as JSON")
    a.set_defaults(func=run_import)
    return a


def run_import(args: argparse.Namespace) -> int:
    import sys

    from memory.store.export import import_session

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.file} is not JSON ({e}); give a file from "
                         "`agent sessions export`") from None
    repo = str(Path(args.repo).resolve()) if args.repo else None
    info = import_session(open_store(args), data, repo)
    if args.json:
        out_json(_summary(info))
    else:
        out(f"imported {info.id} ({info.turn_count} turns, {info.n_tokens} tokens) on "
            f"{info.repo_root}; continue it with: agent run --resume {info.id} \"TASK\"")
    return EXIT_OK
