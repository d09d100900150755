"""The official `openai` and `anthropic` SDKs against the resident server: chat, completions,
streaming, tools, usage with cached tokens, models, errors the SDKs raise as their own."""

from __future__ import annotations

import anthropic
import openai
import pytest

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the repository",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]
GREEDY = {"temperature": 0}  # the SDK has no temperature argument; the API still takes it
SYSTEM = "You are a helpful assistant. " + "Answer briefly and precisely. " * 20


@pytest.fixture(scope="module")
def oai(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def claude(served):
    return anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0)


def chat(oai, question: str, **kw):
    return oai.chat.completions.create(
        model="smollm2", temperature=kw.pop("temperature", 0), max_tokens=kw.pop("max_tokens", 12),
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        **kw)


def test_models_and_health(oai, served):
    assert [m.id for m in oai.models.list().data] == [served.server.model.name]


def test_chat_is_deterministic_and_the_second_call_is_cached(oai):
    first = chat(oai, "What is the capital of France?")
    second = chat(oai, "What is the capital of France?")
    assert first.choices[0].message.content
    assert second.choices[0].message.content == first.choices[0].message.content
    assert first.choices[0].finish_reason in ("stop", "length")
    u = second.usage
    assert u.prompt_tokens > 100 and u.completion_tokens >= 1
    assert u.prompt_tokens_details.cached_tokens >= 16 * (u.prompt_tokens // 16) - 16


def test_streaming_chat_equals_the_whole_reply(oai):
    whole = chat(oai, "Name a colour.").choices[0].message.content
    stream = chat(oai, "Name a colour.", stream=True, stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == whole
    assert finish in ("stop", "length") and usage.completion_tokens >= 1


def test_required_tool_choice_returns_a_structured_call(oai):
    r = chat(oai, "Show me README.md", tools=TOOLS, tool_choice="required", max_tokens=60)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "read_file"
    assert "path" in __import__("json").loads(call.function.arguments)


def test_streamed_tool_call(oai):
    stream = chat(oai, "Show me README.md", tools=TOOLS, tool_choice="required",
                  max_tokens=60, stream=True)
    calls, content = [], ""
    for chunk in stream:
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            content += c.delta.content or ""
    assert calls and calls[0].function.name == "read_file"
    assert "<tool_call>" not in content


def test_completions(oai):
    r = oai.completions.create(model="smollm2", prompt="def fibonacci(n):", max_tokens=8,
                               temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in oai.completions.create(
        model="smollm2", prompt="def fibonacci(n):", max_tokens=8, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_openai_errors_are_the_sdks_own(oai):
    with pytest.raises(openai.BadRequestError, match="messages"):
        oai.chat.completions.create(model="smollm2", messages=[])
    with pytest.raises(openai.BadRequestError, match="context window"):
        chat(oai, "word " * 9000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(oai, "hi", temperature=-1)


def test_anthropic_messages_with_cache_read_tokens(claude):
    def ask():
        return claude.messages.create(model="smollm2", max_tokens=12, extra_body=GREEDY,
                                      system=SYSTEM,
                                      messages=[{"role": "user", "content": "Say hello."}])
    first, second = ask(), ask()
    assert first.content[0].type == "text" and first.content[0].text
    assert second.content[0].text == first.content[0].text
    assert first.stop_reason in ("end_turn", "max_tokens")
    assert second.usage.cache_read_input_tokens > 100
    assert second.usage.input_tokens < 32


def test_anthropic_streaming_and_tool_use(claude):
    tools = [{"name": "read_file", "description": "Read a file",
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    with claude.messages.stream(model="smollm2", max_tokens=60, extra_body=GREEDY, tools=tools,
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Open README.md"}]) as s:
        final = s.get_final_message()
    use = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and use[0].name == "read_file"
    assert isinstance(use[0].input, dict) and "path" in use[0].input
    follow = claude.messages.create(
        model="smollm2", max_tokens=8, extra_body=GREEDY, tools=tools, messages=[
            {"role": "user", "content": "Open README.md"},
            {"role": "assistant", "content": final.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id,
                                          "content": "# Hello"}]}])
    assert follow.usage.output_tokens >= 1


def test_anthropic_errors(claude):
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.messages.create(model="smollm2", max_tokens=0,
                               messages=[{"role": "user", "content": "hi"}])
