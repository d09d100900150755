"""Prefix stabilisation on a Claude-Code-style request sequence (a billing nonce that
changes per request), divergence counted; graceful shutdown finishes the request in flight
and flushes the KV, so a restarted server serves the same prompt from the disk tier."""

from __future__ import annotations

import threading
import uuid

import anthropic

from server.stabilize import PrefixTracker, stabilise
from tests.server.conftest import open_model, start_server

LONG_SYSTEM = "You are Claude Code, a coding agent. " + "Follow the repository's style. " * 40


def claude_code_system() -> list[dict]:
    nonce = uuid.uuid4().hex[:5]
    return [{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.3.{nonce}; "
             f"cc_entrypoint=cli; cch={nonce};"}, {"type": "text", "text": LONG_SYSTEM}]


def test_stabilise_drops_the_nonce_and_moves_dates():
    messages = [{"role": "system", "content": "x-anthropic-billing-header: cch=1a2b3;\nRules."
                 "\nToday's date: 2026-12-01\nMore rules."},
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "tool", "content": "result"}]
    out, info = stabilise(messages)
    assert out[0]["content"] == "Rules.\n\nMore rules."
    assert out[1]["content"] == "hi\n\nToday's date: 2026-12-01"
    assert out[2:] == messages[2:]
    assert (info.dropped, info.moved) == (1, 1)
    later, _ = stabilise(messages + [{"role": "user", "content": "more"}])
    assert later[:4] == out, "a longer conversation renders its start the same"


def test_tracker_reports_where_a_prompt_diverges():
    t = PrefixTracker()
    assert t.observe([1, 2, 3, 4]) is None
    assert t.observe([1, 2, 3, 4, 5, 6]) is None  # an extension
    assert t.observe([1, 2, 9, 4, 5, 6]) == (2, 6)


def cached_fractions(url: str) -> list[float]:
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    out = []
    for i in range(3):
        r = client.messages.create(model="m", max_tokens=4, system=claude_code_system(),
                                   extra_body={"temperature": 0},
                                   messages=[{"role": "user", "content": f"Task {i}: list files"}])
        u = r.usage
        out.append(u.cache_read_input_tokens / (u.cache_read_input_tokens + u.input_tokens))
    return out


def test_nonce_breaks_the_cache_unless_stabilised(smollm2_gguf, tmp_path):
    model = open_model(smollm2_gguf, tmp_path / "cache")
    plain = start_server(model, tmp_path / "a.sock", stabilise=False)
    try:
        unstable = cached_fractions(plain.url)
        diverged = plain.server.ctx.metrics.get("prefix_divergences_total")
    finally:
        plain.stop()
    model = open_model(smollm2_gguf, tmp_path / "cache2")
    stable = start_server(model, tmp_path / "b.sock")
    try:
        stabilised = cached_fractions(stable.url)
        dropped = stable.server.ctx.metrics.get("stabilised_blocks_total", action="dropped")
    finally:
        stable.stop()
    assert max(unstable[1:]) < 0.2, unstable  # the nonce sits in the first page
    assert min(stabilised[1:]) > 0.8, stabilised
    assert diverged == 2 and dropped == 3


def test_shutdown_finishes_requests_and_a_restart_reads_the_disk_tier(smollm2_gguf, tmp_path):
    cache = tmp_path / "cache"
    running = start_server(open_model(smollm2_gguf, cache), tmp_path / "s.sock")
    client = anthropic.Anthropic(base_url=running.url, api_key="x", max_retries=0)
    ask = dict(model="m", max_tokens=24, system=LONG_SYSTEM, extra_body={"temperature": 0},
               messages=[{"role": "user", "content": "Describe the layout."}])
    result = {}
    t = threading.Thread(target=lambda: result.update(r=client.messages.create(**ask)))
    t.start()
    while not running.server.model.engine.running:  # in flight
        pass
    running.stop()
    t.join(60)
    assert result["r"].usage.output_tokens == 24, "the request in flight was finished"
    assert not (tmp_path / "s.sock").exists()
    again = start_server(open_model(smollm2_gguf, cache), tmp_path / "s.sock")
    try:
        client = anthropic.Anthropic(base_url=again.url, api_key="x", max_retries=0)
        r = client.messages.create(**ask)
        by_tier = again.server.ctx.metrics.get("cached_prompt_tokens_total", tier="disk")
    finally:
        again.stop()
    assert r.content[0].text == result["r"].content[0].text
    assert r.usage.cache_read_input_tokens > 200 and by_tier > 200


def test_unix_socket_is_private(served):
    import stat

    assert stat.S_IMODE(served.socket.stat().st_mode) == 0o600
