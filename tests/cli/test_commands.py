"""The CLI's data commands and errors, in-process through `cli.main` (no model loads)."""

from __future__ import annotations

import json
import subprocess

import pytest

from agent.checkpoint import Checkpoints
from cli import main
from memory.store import SessionStore


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_session(dirs, repo=None):
    store = SessionStore(dirs / "data")
    info = store.create_session(str(repo or dirs), "smollm2", "fp", "fix the test")
    store.append_event(info.id, 1, "message_added", {"turn": 1, "role": "user", "content": "hello"})
    store.append_tokens(info.id, 1, "user", [1, 2, 3], "hello")
    store.close()
    return info.id


def test_sessions_list_show_export_delete(dirs, capsys):
    sid = make_session(dirs)
    code, out, _ = run(capsys, "sessions", "list", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == sid
    code, out, _ = run(capsys, "sessions", "show", sid[:10])
    assert code == 0 and "user: hello" in out
    code, out, _ = run(capsys, "sessions", "export", sid)
    assert code == 0 and json.loads(out)["session"]["id"] == sid
    assert run(capsys, "sessions", "delete", sid)[0] == 0
    code, _, err = run(capsys, "sessions", "show", sid)
    assert code == 1 and err.startswith("error:") and err.count("\n") == 1


def test_rewind_restores_code_and_conversation(dirs, capsys):
    repo = dirs / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "a.txt").write_text("before\n")
    sid = make_session(dirs, repo)
    Checkpoints(repo, sid).create(2)
    store = SessionStore(dirs / "data")
    store.add_checkpoint(sid, 2, Checkpoints(repo, sid).get(2).commit)
    store.append_event(sid, 2, "message_added", {"turn": 2, "role": "user", "content": "later"})
    store.close()
    (repo / "a.txt").write_text("after\n")
    (repo / "new.txt").write_text("x\n")
    code, out, _ = run(capsys, "rewind", sid, "2")
    assert code == 0 and "rewound" in out
    assert (repo / "a.txt").read_text() == "before\n" and not (repo / "new.txt").exists()
    events = SessionStore(dirs / "data").events(sid)
    assert [e.payload["content"] for e in events if e.kind == "message_added"] == ["hello"]
    code, _, err = run(capsys, "rewind", sid, "7")
    assert code == 2 and "no checkpoint for turn 7" in err


def test_cache_stats_gc_clear(dirs, capsys):
    kv = dirs / "cache" / "kv" / "0123456789abcdef" / "ab"
    kv.mkdir(parents=True)
    for i in range(3):
        (kv / f"{i:02x}.page").write_bytes(b"x" * 1000)
    code, out, _ = run(capsys, "cache", "stats", "--json")
    stats = json.loads(out)
    assert code == 0 and stats["disk"] == {"pages": 3, "bytes": 3000}
    code, out, _ = run(capsys, "cache", "gc", "--max-bytes", "1.5K", "--json")
    assert code == 0 and json.loads(out)["remaining_bytes"] <= 1536
    assert run(capsys, "cache", "clear")[0] == 0
    assert json.loads(run(capsys, "cache", "stats", "--json")[1])["disk"]["pages"] == 0
    code, _, err = run(capsys, "cache", "gc", "--max-bytes", "lots")
    assert code == 2 and "cannot read size" in err


@pytest.mark.parametrize("flags,needle", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--max-tokens", "0"], "max_tokens"),
])
def test_generate_rejects_bad_sampling_before_loading(dirs, capsys, flags, needle):
    code, _, err = run(capsys, "generate", "--prompt", "hi", *flags)
    assert code == 1 and needle in err and err.count("\n") == 1


def test_generate_missing_model_and_usage(dirs, capsys):
    code, _, err = run(capsys, "generate", "--prompt", "hi", "--model", str(dirs / "none.gguf"))
    assert code == 1 and "does not exist" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["generate"])  # neither --prompt nor --raw
    assert e.value.code == 2


@pytest.mark.slow
def test_generate_prompt_longer_than_the_context(dirs, capsys, smollm2_gguf):
    code, _, err = run(capsys, "generate", "--raw", "word " * 9000, "--no-prefix-cache")
    assert code == 1 and "may grow to 8,192" in err and err.count("\n") == 1


def test_memory_flags_are_checked_before_loading(dirs, capsys):
    for flag, value in (("--gpu-memory", "0"), ("--gpu-memory", "1.5"), ("--gpu-memory", "x"),
                        ("--max-context", "0"), ("--host-memory", "lots")):
        with pytest.raises(SystemExit) as e:
            main(["generate", "--prompt", "hi", flag, value])
        assert e.value.code == 2, (flag, value)
        assert flag in capsys.readouterr().err


@pytest.mark.slow
def test_models_info_prints_the_plan(dirs, capsys, caplog, smollm2_gguf):
    code, text, _ = run(capsys, "models", "info", "--json", "--max-context", "4096")
    plan = json.loads(text)
    assert code == 0 and plan["max_context"] == 4096 and plan["window"] == 8192
    assert plan["kv_bytes_per_token"] * plan["page_size"] == plan["page_bytes"]
    code, text, _ = run(capsys, "models", "info", "--max-context", "100000")
    assert code == 0 and "above the model's window (8,192)" in caplog.text
    assert "context      8,192 tokens" in text
