"""On the GPU: 16 concurrent sessions through the server (pipelined decode, CUDA graphs), each
reply equal to the same request served alone. The model is a small random-weight HF folder of
real layout (the lent GPU machine cannot fetch the default GGUF), in fp32 so batching cannot
change a greedy token."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.model_folder import TINY, write_model_folder
from tests.server.conftest import start_server
from tests.server.test_load_and_faults import chat_body, post


@pytest.mark.gpu
def test_sixteen_sessions_on_the_gpu_equal_each_alone(tmp_path):
    from runtime.local_model import LocalModel, RuntimeOptions

    folder = write_model_folder(tmp_path / "tiny", TINY)
    model = LocalModel.open(str(folder), RuntimeOptions(device="cuda", dtype="fp32",
                                                              cache_dir=tmp_path / "cache"))
    running = start_server(model, tmp_path / "g.sock", max_running=16)
    try:
        prompts = [f"Session {i}: " + "describe a repository layout. " * 200 for i in range(16)]
        alone = [post(running, "/v1/chat/completions", chat_body(p, 32))[2] for p in prompts]
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(
                lambda p: post(running, "/v1/chat/completions", chat_body(p, 32))[2], prompts))
        texts = [r["choices"][0]["message"]["content"] for r in together]
        assert texts == [r["choices"][0]["message"]["content"] for r in alone], json.dumps(
            together[0])[:300]
        assert all(r["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 for r in together)
    finally:
        running.stop()
