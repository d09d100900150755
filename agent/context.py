"""The context layout: stable first (instructions, tools, repository), volatile last.

Nothing early may change once written: no dates, counters or reminders in the system message.
"""

from __future__ import annotations

import json
from typing import Any

from agent.repo_snapshot import Snapshot

INSTRUCTIONS = """You are a coding agent working in the user's repository. You can read, search \
and edit files and run shell commands with the tools below. Work step by step: look at the \
relevant files, make the change, run the tests when there are some, and finish with a short \
answer that says what you found or changed. Paths are relative to the repository root."""

_HERMES_TOOLS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{schemas}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def hermes_tools_block(schemas: list[dict[str, Any]]) -> str:
    """Tool schemas in the Hermes prompt format (for templates that do not render tools)."""
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
    return _HERMES_TOOLS.format(schemas=lines)


def system_message(schemas: list[dict[str, Any]], snapshot: Snapshot | None,
                   tools_in_template: bool) -> dict[str, str]:
    """The first message: instructions, tools (unless the template renders them), the repo."""
    parts = [INSTRUCTIONS]
    if not tools_in_template:
        parts.append(hermes_tools_block(schemas))
    if snapshot is not None and snapshot.text:
        parts.append(snapshot.text.rstrip("\n"))
    return {"role": "system", "content": "\n\n".join(parts)}
