"""The CLI's manners: help with defaults, one-line errors, quiet broken pipes, fast argument
errors, flags before or after an action, export and import round trips."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cli import build_parser, main
from memory.store import SessionStore

AGENT = str(Path(sys.executable).parent / "agent")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sessions(dirs: Path, n: int) -> list[str]:
    store = SessionStore(dirs / "data")
    ids = []
    for i in range(n):
        info = store.create_session(str(dirs), "smollm2", "fp", f"task {i}")
        store.append_tokens(info.id, 0, "system", list(range(40 + i)), "system")
        store.append_event(info.id, 1, "message_added",
                           {"turn": 1, "role": "user", "content": f"hello {i}"})
        store.append_tokens(info.id, 1, "user", [7, 8, 9], "hello")
        store.append_event(info.id, 1, "turn_finished", {"turn": 1, "status": "done"})
        store.release_lock(info.id)
        ids.append(info.id)
    store.close()
    return ids


def parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def test_every_flag_has_help_and_shows_its_default():
    for p in parsers(build_parser()):
        text = p.format_help()
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(
                    action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{p.prog} {action.option_strings or action.dest}: no help"
            d = action.default
            if action.option_strings and not (d is None or d is False or d == []
                                              or d is argparse.SUPPRESS):
                shown = p._get_formatter()._get_help_string(action)
                assert "default" in shown.lower(), (p.prog, action.option_strings)
        assert p.description or p.prog == "agent" or "usage" in text, p.prog
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for needle in ("(default: 12)", "(default: 1024)", "(default: accept-edits)",
                   "(default: text)", "openai:http://HOST:PORT/v1#MODEL", "agent models list"):
        assert needle in " ".join(run_help.split()), needle


def test_run_and_tui_take_the_same_session_flags():
    subs = build_parser()._subparsers._group_actions[0].choices
    def flags(name):
        return {s for a in subs[name]._actions for s in a.option_strings}
    assert flags("tui") - {"--max-turns"} <= flags("run")
    assert {"--allow", "--deny", "--tool-choice", "--max-steps"} <= flags("tui")


def test_a_bad_argument_is_answered_before_torch_loads(tmp_path):
    env = dict(os.environ, AGENT_DATA_DIR=str(tmp_path / "d"))
    for args, needle in [(["run", ""], "give a task"), (["run", "--max-steps", "0", "x"],
                                                        "at least 1"),
                         (["run", "--repo", str(tmp_path / "no"), "x"], "not a directory")]:
        start = time.perf_counter()
        done = subprocess.run([AGENT, *args], env=env, capture_output=True, text=True)
        took = time.perf_counter() - start
        assert done.returncode == 2 and needle in done.stderr, (args, done.stderr)
        assert done.stderr.strip().count("\n") <= 1 and "Traceback" not in done.stderr
        assert took < 2.0, f"{args}: {took:.2f}s"  # ~0.1 s quiet; torch alone takes ~3 s
    probe = ("import sys, cli\ncode = 0\ntry:\n    cli.main(['run', ''])\nexcept SystemExit:\n"
             "    pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.stdout.strip().endswith("False"), done.stdout + done.stderr


def test_a_closed_pipe_ends_quietly_with_0(dirs):
    sessions(dirs, 3)
    env = dict(os.environ, AGENT_DATA_DIR=str(dirs / "data"))
    done = subprocess.run(f"'{AGENT}' sessions list | head -1; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("\n") == 1


def test_known_errors_are_one_line_and_debug_shows_the_trace(dirs, capsys):
    code, _, err = run(capsys, "sessions", "show", "nope")
    assert code == 1 and err.startswith("error:") and err.count("\n") == 1
    env = dict(os.environ, AGENT_DATA_DIR=str(dirs / "data"), AGENT_DEBUG="1")
    done = subprocess.run([AGENT, "sessions", "show", "nope"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "Traceback" in done.stderr
    del env["AGENT_DEBUG"]
    done = subprocess.run([AGENT, "sessions", "--debug", "show", "nope"], env=env,
                          capture_output=True, text=True)
    assert "Traceback" in done.stderr


def test_directory_flags_go_before_or_after_the_action(dirs, capsys):
    other = dirs / "other"
    sid = sessions(other, 1)[0]
    for argv in (["sessions", "--data-dir", str(other / "data"), "list", "--json"],
                 ["sessions", "list", "--json", "--data-dir", str(other / "data")]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and [s["id"] for s in json.loads(out)] == [sid]
    for name, argv in [("c1", ["cache", "clear", "--cache-dir", str(dirs / "c1")]),
                       ("c2", ["cache", "--cache-dir", str(dirs / "c2"), "clear"]),
                       ("c3", ["--debug", "cache", "clear", "--cache-dir", str(dirs / "c3")])]:
        code, out, _ = run(capsys, *argv)
        assert code == 0 and str(dirs / name / "kv") in out, out


def test_export_is_compact_and_imports_into_another_store(dirs, capsys, tmp_path):
    sid = sessions(dirs, 1)[0]
    code, text, _ = run(capsys, "sessions", "export", sid)
    assert code == 0
    data = json.loads(text)
    assert text.count("\n") < 20  # one line per segment and event, not one per token
    assert [s["ids"] for s in data["segments"]] == [list(range(40)), [7, 8, 9]]
    path = tmp_path / "export.json"
    path.write_text(text)
    elsewhere = tmp_path / "elsewhere"
    repo = tmp_path / "repo-here"
    repo.mkdir()
    code, out, _ = run(capsys, "sessions", "import", str(path), "--data-dir", str(elsewhere),
                       "--repo", str(repo), "--json")
    assert code == 0, out
    imported = json.loads(out)
    store = SessionStore(elsewhere)
    assert store.token_log(imported["id"]) == list(range(40)) + [7, 8, 9]
    assert imported["repo"] == str(repo) and imported["turns"] == 1
    assert imported["status"] == "finished"
    again = store.export(imported["id"])
    assert [e["payload"] for e in again["events"]] == [e["payload"] for e in data["events"]]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    code, _, err = run(capsys, "sessions", "import", str(bad), "--data-dir", str(elsewhere))
    assert code == 1 and "not a session export" in err and err.count("\n") == 1
    assert len(store.list_sessions()) == 1  # nothing half-imported


def test_an_unreachable_server_is_one_line_and_a_plain_folder_one_warning(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    env = dict(os.environ, AGENT_DATA_DIR=str(tmp_path / "d"))
    done = subprocess.run([AGENT, "run", "--repo", str(plain), "--model",
                           "openai:http://127.0.0.1:9/v1#m", "hi"], env=env,
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 2, done.stderr
    assert lines[0].startswith("warning:") and "not in a git repository" in lines[0]
    assert lines[1].startswith("error: cannot reach http://127.0.0.1:9/v1")


def test_the_download_is_told_in_stream_json_and_in_lines(tmp_path, monkeypatch):
    from agent.events import Progress
    from cli.download import DownloadReport
    from runtime import model_cache
    from runtime.errors import ModelNotFound

    pulled = tmp_path / "model.gguf"

    def not_cached(spec, pull, cache_dir):
        raise ModelNotFound("not in the cache")

    def pull(spec, progress, cache_dir):
        pulled.write_bytes(b"GGUF" + bytes(2_000_000))
        return pulled

    monkeypatch.setattr(model_cache, "resolve_model", not_cached)
    monkeypatch.setattr(model_cache, "pull", pull)
    events: list[Progress] = []
    lines: list[str] = []
    DownloadReport(events.append, tty=False, err=lines.append).ensure("smollm2", tmp_path)
    assert [(e.kind, e.done, e.total, e.unit) for e in events] == [
        ("download", 0, 0, "bytes"), ("download", 2_000_004, 2_000_004, "bytes")]
    assert lines[0].startswith("downloading model smollm2") and "2.0 MB" in lines[1]
    monkeypatch.setattr(model_cache, "resolve_model", lambda spec, pull, cache_dir: pulled)
    events.clear()
    DownloadReport(events.append, tty=False, err=lines.append).ensure("smollm2", tmp_path)
    assert events == []  # cached: nothing to tell
