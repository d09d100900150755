"""`agent serve` as a process: `agent generate` twice (the second served from the server's
cache, neither loading the model) and two `agent run` sessions at once on the one model it
loaded; `agent serve --stop` finishes, flushes and removes the socket, and says so when no
server runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.stream_schema import validate_stream

AGENT = str(Path(sys.executable).parent / "agent")
ROOT = Path(__file__).resolve().parents[2]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


@pytest.mark.slow
def test_serve_generate_and_two_runs_share_one_model(tmp_path, smollm2_gguf):
    sock = tmp_path / "run" / "agent.sock"
    env = dict(os.environ, AGENT_DATA_DIR=str(tmp_path / "data"), AGENT_SOCKET=str(sock),
               AGENT_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    model = ["--model", str(smollm2_gguf)]
    server = subprocess.Popen([AGENT, "serve", *model, "--device", "cpu", "--no-http"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(sock, server)
        gen = [AGENT, "generate", "--server", "auto", *model, "--json", "--max-tokens", "8",
               "--system", "You are terse. " * 40, "--prompt", "Name a colour."]
        first, second = (json.loads(subprocess.run(gen, env=env, capture_output=True,
                                                   text=True, timeout=300, check=True).stdout)
                         for _ in range(2))
        assert first["text"] == second["text"] and first["timings"]["load_s"] == 0
        assert second["usage"]["cached_tokens"] >= 64
        repo = tmp_path / "repo"
        subprocess.run(["cp", "-r", str(ROOT / "examples" / "calculator"), str(repo)], check=True)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        run = [AGENT, "run", "--server", "auto", *model, "--repo", str(repo), "--output-format",
               "stream-json", "--max-tokens", "48", "--max-turns", "2",
               "Read calc.py and tell me what add(2, 3) returns."]
        runs = [subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
        outs = [r.communicate(timeout=420) for r in runs]
        for r, (stdout, stderr) in zip(runs, outs):
            assert r.returncode in (0, 3), stderr[-500:]
            validate_stream(stdout)
        stop = subprocess.run([AGENT, "serve", "--stop"], env=env, capture_output=True,
                              text=True, timeout=180)
        assert stop.returncode == 0 and f"pid {server.pid}" in stop.stdout, stop.stderr
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=120)
    assert server.returncode == 0, log[-800:]
    assert not sock.exists()
    opened = [line for line in log.splitlines() if "opened:" in line]
    assert len(opened) >= 4, log[-800:]  # two generates, two runs, all in the one server


def test_stop_without_a_server_says_none_runs(tmp_path):
    r = subprocess.run([AGENT, "serve", "--stop", "--socket", str(tmp_path / "none.sock")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no server is running at" in r.stderr


@pytest.mark.slow
def test_a_server_with_idle_exit_shuts_itself_down(tmp_path, smollm2_gguf):
    sock = tmp_path / "agent.sock"
    env = dict(os.environ, AGENT_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    server = subprocess.Popen([AGENT, "serve", "--model", str(smollm2_gguf), "--device", "cpu",
                               "--no-http", "--socket", str(sock), "--idle-exit", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(sock, server)
    stdout, stderr = server.communicate(timeout=120)
    assert server.returncode == 0, stderr[-500:]
    assert "idle for 1 s" in stdout and not sock.exists()
