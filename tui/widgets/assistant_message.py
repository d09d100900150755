"""The assistant's text, streamed into Markdown as it is generated."""

from __future__ import annotations

from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownStream


class AssistantMessage(Markdown):
    """Markdown that grows while the model streams; `-streaming` until `finish`.

    Writes go through Textual's MarkdownStream, which joins fragments that arrive faster than
    the widget can re-parse, so a fast model never queues up renders.
    """

    DEFAULT_CSS = """
    AssistantMessage {
        margin: 1 0 0 0;
        padding: 0 1;
        background: transparent;
        &.-streaming { border-left: blank; }
        & > MarkdownBlock:last-child { margin-bottom: 0; }
    }
    """

    def __init__(self, text: str = "") -> None:
        super().__init__(text)
        self._stream: MarkdownStream | None = None
        self.has_text = bool(text)

    async def write(self, text: str) -> None:
        """Append streamed text."""
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
            self.add_class("-streaming")
        self.has_text = self.has_text or bool(text)
        await self._stream.write(text)

    async def finish(self) -> None:
        """Render whatever is still pending and stop streaming."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()
        self.remove_class("-streaming")
