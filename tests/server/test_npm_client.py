"""A real agent client nobody here wrote, installed from npm: pi (@mariozechner/pi-coding-agent)
runs a task in a throwaway repository against the server's OpenAI endpoint, with its own
system prompt and its read tool; a second run of the same task is served from the cache.
Skipped where npm or node is missing or the package cannot be installed (no registry)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server.conftest import open_model, start_server

PI = "@mariozechner/pi-coding-agent@0.73.1"


@pytest.fixture(scope="module")
def pi_cli() -> list[str]:
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        pytest.skip("npm and node are needed for the npm client test")
    home = Path.home() / ".cache" / "resident-agent-tests" / PI.rsplit("/", 1)[1]
    cli = home / "node_modules" / "@mariozechner" / "pi-coding-agent" / "dist" / "cli.js"
    if not cli.exists():
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(home),
                            PI], capture_output=True, text=True, timeout=900)
        if r.returncode or not cli.exists():
            pytest.skip(f"npm could not install {PI}: {r.stderr.strip()[-300:]}")
    return [node, str(cli)]


def pi_config(root: Path, url: str) -> Path:
    agent = root / "pi-agent"
    agent.mkdir()
    (agent / "models.json").write_text(json.dumps({"providers": {"resident": {
        "baseUrl": url + "/v1", "api": "openai-completions", "apiKey": "unused",
        "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
        "models": [{"id": "smollm2", "contextWindow": 8192, "maxTokens": 96}]}}}))
    # pi compacts when fewer than reserveTokens (16K by default) are left: size it for 8K
    (agent / "settings.json").write_text(json.dumps(
        {"compaction": {"reserveTokens": 1024, "keepRecentTokens": 2048}}))
    return agent


@pytest.mark.slow
def test_pi_runs_a_task_against_the_server(pi_cli, smollm2_gguf, tmp_path):
    running = start_server(open_model(smollm2_gguf, tmp_path / "cache"), tmp_path / "s.sock",
                           temperature=0.0)  # pi names no temperature
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.py").write_text("print('hello from the repository')\n")
    env = {"PATH": str(Path(pi_cli[0]).parent), "HOME": str(tmp_path),
           "PI_CODING_AGENT_DIR": str(pi_config(tmp_path, running.url))}
    task = [*pi_cli, "--provider", "resident", "--model", "smollm2", "--no-session",
            "--tools", "read", "-p", "Read hello.py and tell me what it prints."]
    metrics = running.server.ctx.metrics
    try:
        runs = [subprocess.run(task, cwd=repo, env=env, capture_output=True, text=True,
                               timeout=300) for _ in range(2)]
        cached = metrics.get("cached_prompt_tokens_total", tier="device")
        requests = metrics.get("requests_total", endpoint="chat_completions", status="200")
    finally:
        running.stop()
    for r in runs:
        assert r.returncode == 0, r.stderr[-500:]
        assert r.stdout.strip(), "pi printed the model's answer"
    assert runs[1].stdout == runs[0].stdout, "greedy: the same task gives the same answer"
    assert requests >= 2
    prompt = metrics.get("prompt_tokens_total") / requests
    assert cached >= 0.5 * prompt, "the second run's system prompt and tools came from cache"
