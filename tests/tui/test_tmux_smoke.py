"""The real app in a real terminal: tmux runs `agent` on the default model, we type, it answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

ROOT = Path(__file__).resolve().parents[2]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen(name: str) -> str:
    return tmux("capture-pane", "-t", name, "-p")


def wait_for(name: str, predicate, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen(name)
        if predicate(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"timed out; the screen was:\n{screen(name)}")


def test_prompt_streams_an_answer_and_quits(tmp_path, smollm2_gguf):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "calculator", repo)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    agent = Path(sys.executable).parent / "agent"
    name = f"smoke{time.monotonic_ns()}"
    cmd = (f"cd {repo} && AGENT_DATA_DIR={tmp_path / 'data'} {agent} --max-tokens 48 "
           f"--permission-mode auto; echo EXITED $?; sleep 60")
    tmux("new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd)
    try:
        wait_for(name, lambda s: "ctx" in s and "Ask" in s, 120)
        tmux("send-keys", "-t", name, "Say hello.", "Enter")
        text = wait_for(name, lambda s: "tok/s" in s, 240)
        body = text.split("Say hello.", 1)[-1]  # the prompt may have scrolled off: tool calls
        assert any(line.strip() for line in body.splitlines()[:5]), text  # a streamed answer
        tmux("send-keys", "-t", name, "C-q")
        wait_for(name, lambda s: "EXITED 0" in s, 30)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
