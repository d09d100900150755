"""The OpenAI-compatible backend against a real HTTP server on loopback."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.backends.base import GenParams
from agent.backends.openai_compat import EndpointError, OpenAIBackend, parse_spec


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "secret")

REPLY = ["The ", "answer ", "is 5."]


class Handler(BaseHTTPRequestHandler):
    """A server started with `--api-key secret` (as vLLM and SGLang are): 401 without it."""

    requests: list[dict] = []
    script: list[bytes] = []  # recorded streams to answer with first, then REPLY
    headers_seen: list[dict] = []
    key = "secret"
    window = 4096
    flavour = "vllm"

    def _authorized(self) -> bool:
        Handler.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.headers.get("Authorization") == f"Bearer {Handler.key}":
            return True
        self._json(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error"}})
        return False

    def _json(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if not self._authorized():
            return
        if self.path == "/v1/models" and Handler.flavour == "vllm":
            self._json(200, {"object": "list", "data": [
                {"id": "test-model", "object": "model", "owned_by": "vllm",
                 "max_model_len": Handler.window}]})
        elif self.path == "/v1/models":  # llama.cpp: the window is in /props
            self._json(200, {"object": "list", "data": [
                {"id": "model.gguf", "object": "model", "meta": {"n_ctx_train": 8192}}]})
        elif self.path == "/props" and Handler.flavour == "llama.cpp":
            self._json(200, {"default_generation_settings": {"n_ctx": Handler.window // 2}})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorized():
            return
        Handler.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if Handler.script:
            self.wfile.write(Handler.script.pop(0))
            return
        for piece in REPLY:
            chunk = {"choices": [{"delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {"choices": [{"delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 3,
                          "prompt_tokens_details": {"cached_tokens": 32}}}
        self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.requests.clear()
    Handler.headers_seen.clear()
    Handler.script = []
    Handler.flavour = "vllm"
    yield f"openai:http://127.0.0.1:{httpd.server_address[1]}/v1#test-model"
    httpd.shutdown()


def test_streams_a_reply_and_keeps_the_conversation(server):
    backend = OpenAIBackend(server)
    conv = backend.conversation([])
    conv.append([{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+3?"}])
    text = "".join(conv.generate(GenParams(max_tokens=16, seed=1), threading.Event()))
    assert text == "The answer is 5." and conv.last_reply.usage["prompt_tokens"] == 40
    sent = Handler.requests[0]
    assert sent["model"] == "test-model" and sent["stream"] and sent["seed"] == 1
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert conv.messages[-1] == {"role": "assistant", "content": "The answer is 5."}
    conv.append([{"role": "user", "content": "again"}])
    "".join(conv.generate(GenParams(), threading.Event()))
    assert [m["role"] for m in Handler.requests[1]["messages"]] == [
        "system", "user", "assistant", "user"]


def test_unreachable_server_is_one_clear_error():
    backend = OpenAIBackend("openai:http://127.0.0.1:9/v1#m", context_window=4096,
                            timeout_s=2, max_retries=0)
    conv = backend.conversation([])
    conv.append([{"role": "user", "content": "hi"}])
    with pytest.raises(EndpointError, match="cannot reach"):
        "".join(conv.generate(GenParams(), threading.Event()))


@pytest.mark.parametrize("spec", ["openai:localhost:8000#m", "openai:http://x/v1", "openai:"])
def test_bad_specs(spec):
    with pytest.raises(ValueError, match="openai:http://HOST:PORT/v1#MODEL"):
        parse_spec(spec)


def test_a_turn_reports_the_servers_cached_tokens(server, tmp_path):
    import subprocess

    from agent.events import Shutdown, TurnFinished, UserInput
    from agent.session import AgentSession, SessionOptions

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    session = AgentSession(OpenAIBackend(server), tmp_path,
                           options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("2+3?"))
    session.submit(Shutdown())
    assert session.wait_closed(10)
    events = iter(lambda: session.next_event(0), None)
    turn = [e for e in events if isinstance(e, TurnFinished)][-1]
    assert turn.text == "The answer is 5." and turn.usage.cached_by_tier == {"server": 32}


def test_the_key_is_sent_and_the_window_asked_of_the_server(server, monkeypatch):
    backend = OpenAIBackend(server)
    assert backend.context_window == Handler.window  # /v1/models max_model_len, not 32768
    assert Handler.headers_seen and all(h["authorization"] == "Bearer secret"
                                        for h in Handler.headers_seen)
    monkeypatch.setenv("TEAM_KEY", "wrong")
    with pytest.raises(EndpointError, match="refused the API key"):
        conv = OpenAIBackend(server, context_window=4096, api_key_env="TEAM_KEY",
                             max_retries=0).conversation([])
        conv.append([{"role": "user", "content": "hi"}])
        "".join(conv.generate(GenParams(), threading.Event()))
    with pytest.raises(ValueError, match="NOPE_KEY"):
        OpenAIBackend(server, api_key_env="NOPE_KEY")


FIXTURE = Path(__file__).parent / "fixtures" / "vllm_tool_call_stream.txt"


def test_a_vllm_style_tool_call_stream_becomes_a_tool_call_and_its_result(server, tmp_path):
    """The chunks in vLLM's shape (written after its OpenAI serving code, not captured from
    a live server): the call's name first, its arguments in fragments, finish_reason
    tool_calls, usage in a last chunk with no choices."""
    from agent.events import AssistantMessage, Shutdown, ToolCallFinished, TurnFinished, UserInput
    from agent.session import AgentSession, SessionOptions

    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Handler.script = [FIXTURE.read_bytes()]
    session = AgentSession(OpenAIBackend(server), tmp_path,
                           options=SessionOptions(permission_mode="auto"))
    session.submit(UserInput("What does add do?"))
    session.submit(Shutdown())
    assert session.wait_closed(10)
    events = list(iter(lambda: session.next_event(0), None))
    steps = [e for e in events if isinstance(e, AssistantMessage)]
    assert steps[0].tool_calls[0]["name"] == "read"
    assert steps[0].tool_calls[0]["arguments"] == {"path": "calc.py"}
    done = [e for e in events if isinstance(e, ToolCallFinished)]
    assert done[0].ok and "def add" in done[0].content
    sent = Handler.requests[0]
    assert sent["tools"] and sent["tool_choice"] == "auto"
    assert {t["function"]["name"] for t in sent["tools"]} >= {"read", "edit"}
    second = Handler.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "chatcmpl-tool-3b1e"
    assert second[-1] == {"role": "tool", "tool_call_id": "chatcmpl-tool-3b1e",
                          "content": done[0].content}
    turn = [e for e in events if isinstance(e, TurnFinished)][-1]
    assert turn.text == "The answer is 5."
    assert 0 < turn.usage.cached_input_tokens <= turn.usage.input_tokens
    assert turn.usage.input_tokens >= 1893 + 40  # the server's counts, both requests


def test_the_window_of_a_llama_cpp_server_comes_from_props(server):
    Handler.flavour = "llama.cpp"
    assert OpenAIBackend(server).context_window == Handler.window // 2
    Handler.flavour = "silent"  # neither: the fallback, with a warning
    assert OpenAIBackend(server).context_window == 32768
