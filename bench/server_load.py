"""The resident server under load: TTFT and aggregate decode for 1, 4, 16 concurrent
sessions, and a recorded Claude-Code-style request sequence (a billing nonce that changes
per request) through /v1/messages, cached fraction with and without stabilisation.

Starts the server in this process (one model load), drives it over HTTP with threads.

    python bench/server_load.py --model Qwen/Qwen2.5-7B-Instruct-1M --prompt-tokens 32768 \
        --sessions 1,4,16 --out bench/results/server_load.json
    python bench/server_load.py --device cpu --prompt-tokens 512 --sessions 1,3   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime.local_model import LocalModel, RuntimeOptions
from server.resident import ResidentServer, ServeOptions


def start(model: LocalModel, stabilise: bool) -> tuple[ResidentServer, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = ResidentServer(model, ServeOptions(port=0, max_running=64, max_waiting=256,
                                                stabilise=stabilise))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    return server, loop


def stream(port: int, path: str, body: dict) -> tuple[float, int, float]:
    """(TTFT, tokens, seconds) of one streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps({**body, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    ttft, n = 0.0, 0
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("data:") and '"content": "' in line and '"content": ""' not in line:
            ttft = ttft or time.perf_counter() - start
            n += 1
    conn.close()
    return ttft, n, time.perf_counter() - start


def filler(tokens: int, seed: str) -> str:
    return f"[{seed}] " + "The quick brown fox jumps over the lazy dog. " * (tokens // 10)


def concurrency(port: int, sessions: int, prompt_tokens: int, decode: int) -> dict:
    bodies = [{"model": "m", "temperature": 0, "max_tokens": decode, "messages": [
        {"role": "user", "content": filler(prompt_tokens, f"{sessions}-{i}") + " Summarise."}]}
        for i in range(sessions)]
    wall = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        runs = list(pool.map(lambda b: stream(port, "/v1/chat/completions", b), bodies))
    wall = time.perf_counter() - wall
    ttfts = sorted(r[0] for r in runs)
    tokens = sum(r[1] for r in runs)
    return {"sessions": sessions, "prompt_tokens": prompt_tokens,
            "ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "decode_tok_s": tokens / max(wall - ttfts[0], 1e-9), "wall_s": wall}


def claude_code_sequence(port: int, system_tokens: int, turns: int) -> dict:
    system = filler(system_tokens, "system")
    cached, total = 0, 0
    history: list[dict] = []
    for i in range(turns):
        nonce = uuid.uuid4().hex[:5]
        history.append({"role": "user", "content": f"Step {i}: run the tests."})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        conn.request("POST", "/v1/messages", json.dumps({
            "model": "m", "max_tokens": 16, "temperature": 0, "messages": history,
            "system": [{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.{i}"
                        f".{nonce}; cc_entrypoint=cli; cch={nonce};"},
                       {"type": "text", "text": system}]}), {"Content-Type": "application/json"})
        r = json.loads(conn.getresponse().read())
        conn.close()
        history.append({"role": "assistant", "content": r["content"]})
        if i:
            cached += r["usage"]["cache_read_input_tokens"]
            total += r["usage"]["cache_read_input_tokens"] + r["usage"]["input_tokens"]
    return {"turns": turns, "cached_fraction": cached / max(total, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--prompt-tokens", type=int, default=32768)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--sessions", default="1,4,16")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    model = LocalModel.open(a.model, RuntimeOptions(device=a.device))
    report: dict = {"model": model.name, "device": str(model.engine.device), "load": []}
    for stabilise in (False, True):
        server, loop = start(model, stabilise)
        if stabilise:
            report["load"] = [concurrency(server.port, int(n), a.prompt_tokens, a.decode)
                              for n in a.sessions.split(",")]
        seq = claude_code_sequence(server.port, min(a.prompt_tokens, 16384), a.turns)
        report["claude_code_stabilised" if stabilise else "claude_code_plain"] = seq
        for http_server in server._http:
            http_server.stop_listening()
        server.worker.stop()
        loop.call_soon_threadsafe(loop.stop)
    model.close()
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
