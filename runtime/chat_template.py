"""Chat templates: messages to prompt text, rendered as transformers' `apply_chat_template` does.

Same jinja2 conventions: a sandboxed environment, `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, `raise_exception`, `strftime_now`, a `tojson` filter that keeps
non-ASCII text and takes `indent`; messages lose their None-valued keys; `bos_token` and
`eos_token` are template variables. `render_delta` serves the append-only token log: it
returns only the text that new messages add to an earlier rendering; `render_pieces` cuts that
delta into the template's own markup and the messages' text, so that text is tokenized as text
(a `<|im_end|>` inside a file never becomes the special token).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtime.errors import RuntimeError_

Message = dict[str, Any]

# Names a message's reasoning comes under; templates (Qwen3, gpt-oss) read the first two.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(RuntimeError_):
    """A template does not compile, or refused the messages (`raise_exception`)."""


class TemplateNotAppendOnly(RuntimeError_):
    """Rendering more messages changed the text of earlier ones, so the log cannot just grow."""


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """A run of rendered text: the template's markup (special tokens allowed) or message text."""

    text: str
    markup: bool


class ChatTemplate:
    """A compiled chat template.

    `now`, when given, pins what `strftime_now` sees: a template that prints today's date would
    otherwise change the conversation's first tokens when a session resumes another day.
    """

    def __init__(
        self,
        source: str,
        bos_token: str = "",
        eos_token: str = "",
        *,
        now: datetime | None = None,
        **special_tokens: str,
    ):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.now = now
        # transformers always passes `documents` (None when absent); some templates test for it.
        self._variables = {
            "bos_token": bos_token,
            "eos_token": eos_token,
            "documents": None,
            **special_tokens,
        }
        try:
            self._template = _environment(self._strftime_now).from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(
                f"chat template does not compile (line {e.lineno}: "
                f"{e.message}); fix the model's chat template"
            ) from e

    def render(
        self,
        messages: list[Message],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages` (and tool schemas), as transformers renders it."""
        variables = {**self._variables, **_plain(kwargs)}
        try:
            return self._template.render(
                messages=_normalize(messages),
                tools=_plain(tools),
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template refused the messages: {_one_line(e)}") from e

    def render_delta(
        self,
        previous_messages: list[Message],
        new_messages: list[Message],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = False,
        *,
        previous_text: str | None = None,
        **kwargs: Any,
    ) -> str:
        """The text `new_messages` add after `previous_messages`.

        The earlier rendering is taken without a generation prompt (pass `previous_text` to
        use an exact earlier text instead, e.g. one that ended with generated tokens). Raises
        TemplateNotAppendOnly when it is not a prefix of the full rendering.
        """
        if previous_text is None:
            # Nothing rendered yet is the empty text (some templates cannot render no messages).
            previous_text = ""
            if previous_messages:
                previous_text = self.render(previous_messages, tools, False, **kwargs)
        full = self.render(previous_messages + new_messages, tools, add_generation_prompt, **kwargs)
        if not full.startswith(previous_text):
            at = _first_difference(previous_text, full)
            raise TemplateNotAppendOnly(
                f"the chat template re-renders earlier messages differently (first change at "
                f"character {at}: {previous_text[at : at + 30]!r} became {full[at : at + 30]!r}); "
                "this template cannot extend a conversation append-only"
            )
        return full[len(previous_text) :]

    def render_pieces(
        self,
        previous_messages: list[Message],
        new_messages: list[Message],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> list[Piece]:
        """`render_delta`'s text, cut into the template's markup and the messages' contents.

        Contents are found by rendering them between random markers; a template that trims
        them (Llama 3.1) is rendered again with trimmed contents. Raises ChatTemplateError when
        the template transforms contents in a way the markers cannot follow."""
        delta = self.render_delta(previous_messages, new_messages, tools, add_generation_prompt,
                                  **kwargs)
        for strip in (False, True):
            pieces = self._marked_pieces(previous_messages, new_messages, tools,
                                         add_generation_prompt, strip, **kwargs)
            if pieces is not None and "".join(p.text for p in pieces) == delta:
                return pieces
        raise ChatTemplateError(
            "the chat template rewrites message text in a way that cannot be told apart from "
            "its markup; use a model with a standard chat template"
        )

    def _marked_pieces(self, previous: list[Message], new: list[Message], tools,
                       add_generation_prompt: bool, strip: bool, **kwargs: Any
                       ) -> list[Piece] | None:
        every = previous + new
        tag = _unused_tag(new)  # only the new part of the rendering is split
        opening, closing = f"\ue000{tag}\ue001", f"\ue002{tag}\ue003"

        def mark(messages: list[Message]) -> list[Message]:
            return [_marked(m, opening, closing, strip) for m in messages]

        before = self.render(mark(previous), tools, False, **kwargs) if previous else ""
        full = self.render(mark(every), tools, add_generation_prompt, **kwargs)
        if not full.startswith(before):
            return None
        return _split_marked(full[len(before):], opening, closing)

    def _strftime_now(self, fmt: str) -> str:
        return (self.now or datetime.now()).strftime(fmt)


def _environment(strftime_now) -> ImmutableSandboxedEnvironment:
    # Templates come from model repositories: untrusted code, hence the immutable sandbox.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes HTML characters (<, >, &, '), which a prompt must not do.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _normalize(messages: list[Message]) -> list[Message]:
    """Plain dicts without None values (templates print 'None' or crash on them), with the
    reasoning aliases transformers fills in."""
    out = []
    for message in _plain(messages):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"a chat message must be a dict, got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _plain(value: Any) -> Any:
    """JSON-like data only: the sandbox cannot vouch for the methods of arbitrary objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, numpy scalars) carry extra methods: back to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _unused_tag(messages: list[Message]) -> str:
    """A random tag no message contains (the markers must not occur in the text they mark)."""
    text = json.dumps(_plain(messages), ensure_ascii=False)
    while True:
        tag = secrets.token_hex(6)
        if tag not in text:
            return tag


def _marked(message: Message, opening: str, closing: str, strip: bool) -> Message:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return message
    return {**message, "content": opening + (content.strip() if strip else content) + closing}


def _split_marked(text: str, opening: str, closing: str) -> list[Piece] | None:
    """Markup outside the markers, message text inside; None when they do not nest properly."""
    pieces: list[Piece] = []
    inside, at = False, 0
    for m in re.finditer(f"{re.escape(opening)}|{re.escape(closing)}", text):
        if (m.group() == opening) == inside:
            return None
        if m.start() > at:
            pieces.append(Piece(text[at : m.start()], markup=not inside))
        inside, at = not inside, m.end()
    if inside:
        return None
    if at < len(text):
        pieces.append(Piece(text[at:], markup=True))
    return pieces


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _one_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
