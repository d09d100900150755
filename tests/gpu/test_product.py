"""The product on a GPU, the way a user runs it: the installed `agent` command on a real-shape
HF folder (Qwen2.5-7B-Instruct-1M: 28 layers, 4 KV heads, a 1,010,000-token window; random bf16
weights), in new processes each time.

Set AGENT_TEST_MODEL_DIR to keep the 15 GB folder between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.model_folder import QWEN25_7B_1M, write_model_folder

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    base = os.environ.get("AGENT_TEST_MODEL_DIR")
    root = Path(base) if base else tmp_path_factory.mktemp("model")
    return write_model_folder(root / "qwen25-7b-1m", QWEN25_7B_1M)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "AGENT_CACHE_DIR": str(tmp_path / "cache"),
            "AGENT_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}


def agent(*args: str, env: dict, stdin: str | None = None, timeout: int = 900):
    exe = shutil.which("agent")
    cmd = [exe] if exe else [sys.executable, "-m", "cli"]
    return subprocess.run([*cmd, *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def plan(model_dir: Path, env: dict, *flags: str) -> dict:
    r = agent("models", "info", str(model_dir), "--json", *flags, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_memory_plan_holds_a_1m_window_and_what_is_asked(model_dir, env):
    full = plan(model_dir, env)
    assert full["window"] == 1_010_000 and full["max_context"] == 1_010_000, full
    assert full["kv_bytes_per_token"] == 56 * 1024
    assert plan(model_dir, env, "--max-context", "131072")["max_context"] == 131072
    above = agent("models", "info", str(model_dir), "--max-context", "2000000", env=env)
    assert above.returncode == 0 and "above the model's window" in above.stderr
    tight = agent("models", "info", str(model_dir), "--gpu-memory", "0.12", env=env)
    assert tight.returncode == 1 and tight.stderr.count("\n") == 1, tight.stderr
    assert "--gpu-memory" in tight.stderr


def long_text(tokens: int) -> str:
    """Real source text (the standard library), about `tokens` tokens of it."""
    import sysconfig

    parts, size = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = f.read_text(errors="replace")
        parts.append(text)
        size += len(text)
        if size > tokens * 3.2:
            break
    return "".join(parts)


def generate(model_dir, env, text: str, n: int = 32) -> dict:
    r = agent("generate", "--model", str(model_dir), "--raw", "-", "--max-tokens", str(n),
              "--json", env=env, stdin=text)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_generate_short_then_a_100k_prompt_restored_exactly_by_a_new_process(model_dir, env):
    short = generate(model_dir, env, "def add(a, b):", n=16)
    assert len(short["tokens"]) == 16 and short["timings"]["decode_tok_s"] > 0
    first = generate(model_dir, env, long_text(100_000))
    n = first["usage"]["prompt_tokens"]
    assert n >= 100_000 and first["usage"]["cached_tokens"] == 0
    second = generate(model_dir, env, long_text(100_000))
    assert second["usage"]["cached_tokens"] >= 0.99 * n, second["usage"]
    assert second["usage"]["computed_tokens"] == 0
    assert second["tokens"] == first["tokens"], "a restored prompt must continue identically"
    print(json.dumps({"first": first["timings"], "second": second["timings"], "n": n}))


RESUME = textwrap.dedent("""
    import json, os, sys
    from runtime.local_model import LocalModel, RuntimeOptions
    from runtime.engine.sampling import SamplingParams
    model = LocalModel.open(sys.argv[1], RuntimeOptions(max_context=200_000))
    engine, tok = model.engine, model.tokenizer
    seq = engine.new_sequence()
    state = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    turns = [open(sys.argv[2]).read(), "Now explain the first function.", "And the second?",
             "Which one is faster?"]
    if state is not None:
        engine.restore(seq, state)
        turns = turns[3:]
    out = []
    for i, text in enumerate(turns):
        engine.extend(seq, tok.encode(f"<|im_start|>user\\n{text}<|im_end|>\\n"
                                      "<|im_start|>assistant\\n"))
        out.append([e.token_id for e in engine.generate(seq, SamplingParams(max_tokens=24))])
        model.flush()
        if state is None and i == 2:
            print(json.dumps({"log": list(seq.tokens)}), flush=True)
    print(json.dumps({"turn4": out[-1]}), flush=True)
    os._exit(0)  # no close: the process ends as a killed one would
""")


def test_three_turns_a_new_process_and_a_fourth_turn_continue_exactly(model_dir, env, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(long_text(20_000))
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    run = [sys.executable, str(script), str(model_dir), str(prompt)]
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(x) for x in first.stdout.splitlines() if x.startswith("{")]
    log, want = lines[0]["log"], lines[1]["turn4"]
    second = subprocess.run([*run, json.dumps(log)], env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stderr
    got = [json.loads(x) for x in second.stdout.splitlines() if x.startswith("{")][0]["turn4"]
    assert got == want, "the resumed fourth turn differs from the uninterrupted one"


def make_repo(root: Path) -> Path:
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n"
                                       "    assert add(2, 3) == 5\n")
    (root / "README.md").write_text("# calc\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "."],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True)
    return root


def stream(r) -> list[dict]:
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def test_agent_run_with_tool_calls_then_continue_in_a_new_process(model_dir, env, tmp_path):
    repo = make_repo(tmp_path / "repo")
    common = ["--repo", str(repo), "--model", str(model_dir), "--max-context", "131072",
              "--output-format", "stream-json", "--max-tokens", "64"]
    r1 = agent("run", *common, "--tool-choice", "required", "--max-steps", "2",
               "Read calc.py.", env=env)
    assert r1.returncode in (0, 3), r1.stderr
    events = stream(r1)
    kinds = [e.get("type") for e in events]
    assert "tool_finished" in kinds, kinds
    started = next(e for e in events if e.get("type") == "init")
    assert started.get("context_window") == 131072, started
    r2 = agent("run", *common, "--continue", "--max-turns", "1", "What did you read?",
               env=env)
    assert r2.returncode in (0, 3), r2.stderr
    turns = [e for e in stream(r2) if e.get("type") == "turn_finished"]
    usage = turns[-1]["usage"]
    assert usage["cached_input_tokens"] >= 0.95 * usage["input_tokens"] - 256, usage


def test_a_gpu_held_by_another_process_is_one_line_naming_it(model_dir, env):
    """What a user meets when a resident server (or anything else) holds the card and a command
    loads in-process: one line that says who holds the memory and how to share or free it."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, torch
        free, _ = torch.cuda.mem_get_info()
        block = torch.empty(free - (8 << 30), dtype=torch.uint8, device="cuda")
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = agent("generate", "--server", "off", "--model", str(model_dir), "--prompt", "hi",
                  "--max-tokens", "2", env=env, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "other processes hold" in lines[0], r.stderr[-800:]
    assert "agent serve --stop" in lines[0] and "Traceback" not in r.stderr
