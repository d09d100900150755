"""The OpenAI-compatible backend against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.backends.base import GenParams
from agent.backends.openai_compat import EndpointError, OpenAIBackend, parse_spec

REPLY = ["The ", "answer ", "is 5."]


class Handler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
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
    backend = OpenAIBackend("openai:http://127.0.0.1:9/v1#m", timeout_s=2)
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
