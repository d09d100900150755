"""What a user sees on the GPU: `agent run` over repositories of real source text.

For each size (tokens of repository in the first turn's snapshot):
- first turn, through `agent run --output-format stream-json` in a new process: process start
  to session start (load + warm-up), to the first token (ingest), and the ingest rate against
  the engine's raw prefill of the same number of tokens (`agent generate --no-prefix-cache`);
- resume, `agent run --continue` in a new process: process start to the first token, with the
  tokens served from disk, against the first turn's re-prefill;
- the next turn in the same process (the agent backend's conversation, as the TUI holds it):
  a 2K-token message on the resident context, time to its first token;
- decode tok/s inside the agent turn (`turn_finished` usage).

Usage (on the H200, after `. bench/h200_setup.sh`):
    python3 bench/gpu_agent.py --sizes 131072 491520 --out $OUT/gpu_agent.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.model_folder import QWEN25_7B_1M, write_model_folder  # noqa: E402

CHARS_PER_TOKEN = 2.7  # the test tokenizer on the standard library (measured: 118,671 / 320K)


def make_repo(root: Path, tokens: int) -> Path:
    """A git repository of standard-library sources, about `tokens` tokens of them."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    budget, n = tokens * CHARS_PER_TOKEN, 0
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    for i, f in enumerate(f for f in files if "test" not in f.parts):
        text = f.read_text(errors="replace")
        if n + len(text) > budget:
            break
        dest = root / f"pkg{i % 50}" / f.name
        dest.parent.mkdir(exist_ok=True)
        dest.write_text(text)
        n += len(text)
    for cmd in (["git", "init", "-q"], ["git", "add", "."],
                ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "src"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def drop_caches() -> bool:
    """Drop the OS page cache (root only), so reads come from the disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def agent_cmd() -> list[str]:
    exe = shutil.which("agent")
    return [exe] if exe else [sys.executable, "-m", "cli"]


def timed_stream(args: list[str], env: dict) -> dict:
    """Run `agent run ... --output-format stream-json`; seconds since start of each first event."""
    start = time.perf_counter()
    proc = subprocess.Popen([*agent_cmd(), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    marks: dict[str, float] = {}
    finished = None
    for line in proc.stdout:
        if not line.strip():
            continue
        event = json.loads(line)
        kind = event.get("type")
        now = time.perf_counter() - start
        marks.setdefault(kind, now)
        if kind == "progress":
            what = event.get("what") or event.get("kind") or event.get("stage")
            marks.setdefault(f"{what}_first", now)
            marks.setdefault(f"{what}_first_done", event.get("done", 0))
            marks[f"{what}_last"] = now
            marks[f"{what}_total"] = event.get("total", 0)
        if kind == "turn_finished":
            finished = event
    err = proc.stderr.read()
    proc.wait()
    marks["exit"] = time.perf_counter() - start
    assert proc.returncode in (0, 3), err
    return {"marks": marks, "usage": finished["usage"] if finished else None}


def raw_prefill(model: Path, tokens: int, env: dict) -> dict:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    parts, n = [], 0
    for f in files:
        t = f.read_text(errors="replace")
        parts.append(t)
        n += len(t)
        if n > tokens * CHARS_PER_TOKEN:
            break
    text = "".join(parts)
    r = subprocess.run([*agent_cmd(), "generate", "--server", "off", "--model", str(model),
                        "--raw", "-",
                        "--max-tokens", "2", "--json", "--no-prefix-cache"], env=env,
                       input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return {"tokens": out["usage"]["prompt_tokens"], "prefill_s": out["timings"]["prefill_s"]}


NEXT_TURN = """
import json, sys, time
from runtime.local_model import LocalModel, RuntimeOptions
from runtime.engine.sampling import SamplingParams
model = LocalModel.open(sys.argv[1], RuntimeOptions())
engine, tok = model.engine, model.tokenizer
tokens = json.loads(open(sys.argv[2]).read())
seq = engine.new_sequence()
t = time.perf_counter(); r = engine.restore(seq, tokens); restore = time.perf_counter() - t
msg = tok.encode("<|im_start|>user\\n" + open(sys.argv[3]).read() + "<|im_end|>\\n"
                 "<|im_start|>assistant\\n")
t = time.perf_counter()
engine.extend(seq, msg)
next(iter(engine.generate(seq, SamplingParams(max_tokens=1))))
print(json.dumps({"restore_s": restore, "restored": r.cached_tokens, "message_tokens": len(msg),
                  "next_turn_ttft_s": time.perf_counter() - t, "context": len(seq.tokens)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[131072])
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_agent"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = write_model_folder(Path(os.environ.get("AGENT_TEST_MODEL_DIR", "/tmp/models"))
                               / "qwen25-7b-1m", QWEN25_7B_1M)
    results = []
    for size in args.sizes:
        work = args.work / str(size)
        env = {**os.environ, "AGENT_CACHE_DIR": str(work / "cache"),
               "AGENT_DATA_DIR": str(work / "data")}
        repo = make_repo(work / "repo", size)
        # --server off: this measures a process of its own (load, warm-up, ingest); with the
        # resident server a turn skips the load (bench/server_load.py measures that).
        common = ["run", "--server", "off", "--repo", str(repo), "--model", str(model),
                  "--output-format",
                  "stream-json", "--max-turns", "1", "--max-tokens", "32", "--tool-choice",
                  "none"]
        first = timed_stream([*common, "Summarise the repository."], env)
        dropped = drop_caches()  # the resume reads the disk, not the page cache
        resume = timed_stream([*common, "--continue", "And in one word?"], env)
        raw = raw_prefill(model, first["usage"]["input_tokens"], env)
        row = {"size": size, "first": first, "resume": resume, "raw": raw,
               "page_cache_dropped": dropped}
        drop_caches()
        row.update(next_turn(model, env, work, first["usage"]["context_tokens"]))
        results.append(row)
        print(json.dumps(summary(row)), flush=True)
        shutil.rmtree(work / "cache")  # its pages: the next size needs the disk
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def next_turn(model: Path, env: dict, work: Path, context: int) -> dict:
    """The resident next turn: restore the session's tokens, then a 2K-token message."""
    from memory.store import SessionStore

    store = SessionStore.open(Path(env["AGENT_DATA_DIR"]))
    tokens = store.token_log(store.list_sessions()[0].id)
    (work / "state.json").write_text(json.dumps(tokens))
    (work / "msg.txt").write_text("def f(x):\n    return x\n" * 330)  # about 2K tokens
    r = subprocess.run([sys.executable, "-c", NEXT_TURN, str(model), str(work / "state.json"),
                        str(work / "msg.txt")], env={**env, "PYTHONPATH": os.pathsep.join(
                            [str(REPO), env.get("PYTHONPATH", "")])},
                       capture_output=True, text=True)
    if r.returncode:
        return {"next_turn": f"failed: {r.stderr.strip().splitlines()[-1]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def summary(row: dict) -> dict:
    f, r, raw = row["first"], row["resume"], row["raw"]
    m = f["marks"]
    tokens = f["usage"]["input_tokens"]
    # Chunk progress arrives after each chunk: extrapolate the first chunk from the others.
    done0, total = m.get("ingest_first_done", 0), m.get("ingest_total", 0)
    span = m.get("ingest_last", 0) - m.get("ingest_first", 0)
    ingest = span * total / (total - done0) if total > done0 else float("nan")
    return {
        "size": row["size"], "prompt_tokens": tokens,
        "first_turn_ingest_s": round(ingest, 2),
        "raw_prefill_s": raw["prefill_s"],
        "ingest_over_raw": round(ingest / raw["prefill_s"], 3) if raw["prefill_s"] else None,
        "first_session_started_s": round(f["marks"]["init"], 2),
        "first_turn_first_token_s": round(m.get("message_delta", m["exit"]), 2),
        "resume_first_token_s": round(r["marks"].get("message_delta", r["marks"]["exit"]), 2),
        "resume_session_started_s": round(r["marks"]["init"], 2),
        "resume_cached": r["usage"]["cached_input_tokens"] if r["usage"] else None,
        "resume_computed": r["usage"]["computed_tokens"] if r["usage"] else None,
        "decode_tok_s": f["usage"].get("decode_tok_s"),
        "next_turn": {k: row.get(k) for k in ("restore_s", "next_turn_ttft_s", "next_turn")},
    }


if __name__ == "__main__":
    main()
