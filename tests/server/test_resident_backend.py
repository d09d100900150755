"""The agent's own client over the Unix socket: two conversations at once on one model,
turns that send only their new tokens, a resume served from the server's tiers, a server
that lost the session (restored from the client's log), and the --server policy."""

from __future__ import annotations

import threading

import pytest

from agent.backends import open_backend
from agent.backends.base import GenParams
from agent.backends.resident import ServerUnavailable, default_mode, open_remote

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 30}


def turn(conv, text: str, n: int = 10) -> str:
    conv.append([{"role": "user", "content": text}])
    return "".join(conv.generate(GenParams(max_tokens=n), threading.Event()))


def test_two_sessions_at_once_share_the_server(served):
    backend = open_remote(served.socket)
    assert backend.name == served.server.model.name
    replies: dict[int, list[str]] = {}

    def session(i: int) -> None:
        conv = backend.conversation([])
        conv.append([SYSTEM])
        replies[i] = [turn(conv, f"Question {k} of session {i}?") for k in range(2)]
        conv.close()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(replies) == [0, 1] and all(all(r for r in rs) for rs in replies.values())
    assert not served.server.worker.sessions, "closed conversations released their sessions"


def test_resume_comes_from_the_servers_tiers_and_replies_agree(served):
    backend = open_remote(served.socket)
    conv = backend.conversation([])
    conv.append([SYSTEM])
    first = turn(conv, "Name three rivers.")
    state = conv.state()
    conv.close()
    again = backend.conversation([], restore=state)
    assert again.carried.cached_tokens >= len(state["tokens"]) - 16
    assert set(again.carried.cached_by_tier) <= {"device", "host", "disk"}
    second = turn(again, "And three mountains?")
    fresh = backend.conversation([], restore=state)
    assert turn(fresh, "And three mountains?") == second
    assert first
    again.close()
    fresh.close()


def test_a_lost_session_is_restored_from_the_clients_log(served):
    backend = open_remote(served.socket)
    conv = backend.conversation([])
    conv.append([SYSTEM])
    turn(conv, "Hello?")
    served.server.worker.call(lambda e: e.release(
        served.server.worker.sessions.pop(conv.seq.sid))).result(10)
    assert turn(conv, "Still there?")  # 409, restore, then the turn
    assert len(served.server.worker.sessions[conv.seq.sid].tokens) == len(conv.seq.tokens)
    conv.close()


def test_tool_constraints_travel_as_data(served):
    backend = open_remote(served.socket)
    tools = [{"type": "function", "function": {"name": "read", "description": "read a file",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                             "required": ["path"]}}}]
    conv = backend.conversation(tools)
    conv.append([SYSTEM, {"role": "user", "content": "Open README.md"}])
    text = "".join(conv.generate(GenParams(max_tokens=60, tool_choice="required"),
                                 threading.Event()))
    assert '"read"' in text and "path" in text
    conv.close()


def test_server_policy(tmp_path, monkeypatch):
    assert default_mode() == "off"  # under pytest
    assert default_mode("auto") == "auto"
    with pytest.raises(ValueError, match="auto or off"):
        default_mode("sometimes")
    with pytest.raises(ServerUnavailable, match="agent serve"):
        open_remote(tmp_path / "none.sock")
    from agent.backends.openai_compat import EndpointUnreachable

    with pytest.raises(EndpointUnreachable, match="127.0.0.1:9"):  # that server, never ours
        open_backend("openai:http://127.0.0.1:9/v1#m", server="auto")
