"""Streaming detokenization: token ids in one at a time, complete text out.

A byte-level token can hold half of a UTF-8 character (an emoji is often split over two or three
tokens), and sentencepiece decoders treat a sequence's first token specially (the leading space
is stripped). So text is never decoded token by token: the decoder keeps a short window of
recent ids, decodes the whole window, and emits what it has not emitted yet, holding back a
trailing U+FFFD (an unfinished character) until a later token completes it.

Sentencepiece byte fallback needs one more rule: its decoder turns a whole run of `<0xXX>` tokens
into U+FFFDs when the run is not valid UTF-8, even bytes that decoded fine on their own, so
text is held back while the stream ends in such a run.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT = "\ufffd"
# Slide the window once it holds this many ids; it keeps one id as context. Only a long run of
# unfinished characters (invalid UTF-8) keeps it growing past this.
WINDOW = 16


class Decodes(Protocol):
    """What the decoder needs of a tokenizer (runtime.tokenizer.Tokenizer has it)."""

    byte_fallback_ids: frozenset[int]  # `<0xXX>` token ids; empty for byte-level vocabularies

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...

    def id_to_token(self, token_id: int) -> str | None: ...


class StreamDecoder:
    """Turns a stream of token ids into text pieces.

    The concatenation of every `push` result and the final `flush` equals
    `tokenizer.decode(all_ids)`; with `context` (ids already in the sequence before the
    stream, e.g. the prompt), it equals the text those ids add after the context's text, so a
    sentencepiece leading space is kept. Each push decodes a window of a few ids: no work grows
    with the length of the stream.
    """

    def __init__(
        self,
        tokenizer: Decodes,
        skip_special_tokens: bool = False,
        context: list[int] | None = None,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(context[-WINDOW:]) if context else []
        self._emitted = len(self._decode())  # chars of the window's text already handed out
        self._byte_ids = getattr(tokenizer, "byte_fallback_ids", frozenset())
        self._special_ids = getattr(tokenizer, "special_ids", frozenset())
        self._in_byte_run = False

    def push(self, token_id: int) -> str:
        """Add one id; return the new complete text (possibly "")."""
        self._ids.append(token_id)
        if self._byte_ids and self._extends_byte_run(token_id):
            return ""
        text = self._decode()
        end = len(text.rstrip(REPLACEMENT))  # an unfinished character may still complete
        out = text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        if end == len(text) and len(self._ids) >= WINDOW:
            self._slide()
        return out

    def flush(self) -> str:
        """Everything held back (an unfinished character becomes U+FFFD, as `decode` gives)."""
        text = self._decode()
        out = text[self._emitted :]
        self._emitted = len(text)
        return out

    def _extends_byte_run(self, token_id: int) -> bool:
        # An id the vocabulary lacks, or a skipped special token, decodes to nothing: the run
        # goes on across it.
        unknown = self.tokenizer.id_to_token(token_id) is None
        if not unknown and not (self.skip_special_tokens and token_id in self._special_ids):
            self._in_byte_run = token_id in self._byte_ids
        return self._in_byte_run

    def _decode(self) -> str:
        return self.tokenizer.decode(self._ids, skip_special_tokens=self.skip_special_tokens)

    def _slide(self) -> None:
        # Keep the last id as context, but only one that decodes to some text: a window opening
        # on a skipped special token (or a bare "▁") would let the decoder strip the next
        # token's leading space, which the full decode keeps.
        last = self._ids[-1:]
        text = self.tokenizer.decode(last, skip_special_tokens=self.skip_special_tokens)
        if text:
            self._ids, self._emitted = last, len(text)
