"""The small tables the /model and /context commands print into the transcript, and the
one-line notices for a session's opening (resume card, repository snapshot)."""

from __future__ import annotations

from textual.content import Content

from agent.events import SnapshotTaken
from tui.catalog import SessionSummary
from tui.formatting import percent, tokens
from tui.info import AppInfo

BAR_WIDTH = 20


def model_card(info: AppInfo) -> Content:
    """Model, context window, repository and session."""
    window = f"{tokens(info.context_window)} tokens" if info.context_window else "unknown"
    rows = [
        ("model", info.model or "unknown"),
        ("context window", window),
        ("repository", info.repo_root or "unknown"),
        ("session", info.session_id or "—"),
    ]
    return table("Model", rows)


def context_card(breakdown: dict[str, int] | None, used: int, window: int) -> Content:
    """Tokens per context segment against the window; `used` when there is no breakdown."""
    if breakdown is None:
        rows = [
            ("resident", f"{tokens(used)} of {tokens(window)} {percent(used, window)}"),
            ("by segment", "not available in this session"),
        ]
        return table("Context", rows)
    rows = [
        (name, f"{tokens(n):>7}  {percent(n, window):>4}  {bar(n, window)}")
        for name, n in breakdown.items()
    ]
    total = sum(breakdown.values())
    of_window = f"  of {tokens(window)}" if window else ""
    rows.append(("total", f"{tokens(total):>7}  {percent(total, window):>4}{of_window}"))
    return table("Context", rows)


def session_card(session_id: str, origin: SessionSummary) -> Content:
    """What the user needs after a resume or fork (earlier turns are not replayed on screen)."""
    opened = "Resumed" if session_id == origin.id else f"Forked {origin.id} as"
    heading = f"{opened} {session_id}: {origin.title}" if origin.title else f"{opened} {session_id}"
    detail = f"{origin.turns} turns · {tokens(origin.tokens)} tokens · {origin.repo}"
    parts = [Content.styled(heading, "bold"), Content.styled(detail, "$text-muted")]
    if origin.summary:
        parts.append(Content(origin.summary))
    return Content("\n").join(parts)


def table(title: str, rows: list[tuple[str, str]]) -> Content:
    """A bold title over label/value rows, labels aligned."""
    width = max(len(label) for label, _ in rows)
    lines = [
        Content.assemble((f"{label:<{width}}  ", "$text-muted"), value) for label, value in rows
    ]
    return Content("\n").join([Content.styled(title, "bold"), *lines])


def bar(part: int, whole: int, width: int = BAR_WIDTH) -> str:
    """A text bar of `part` out of `whole`."""
    filled = min(width, round(width * part / whole)) if whole > 0 else 0
    return "█" * filled + "░" * (width - filled)


def snapshot_line(event: SnapshotTaken) -> str:
    """What the repository snapshot holds, in one line: counts, then the first files."""
    names = ", ".join(event.inlined[:6]) + (", ..." if event.inlined_count > 6 else "")
    return f"Repository snapshot: {event.summary}" + (f" ({names})" if names else "")
