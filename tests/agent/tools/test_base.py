"""The tool contract: schemas, argument validation, and failures turned into results."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.tools import default_tools
from agent.tools.base import Tool, ToolArgs, ToolContext, ToolResult, clip_text, run_tool
from agent.tools.read import ReadTool


class Boom(Tool):
    name = "boom"
    description = "Always fails."
    Args = ToolArgs
    kind = "read"

    def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        raise RuntimeError("no such thing\nsecond line")


def test_schemas_have_the_function_shape():
    tools = default_tools()
    names = [t.name for t in tools]
    assert names == ["read", "edit", "write", "grep", "glob", "shell", "shell_output", "git"]
    for tool in tools:
        schema = tool.schema()
        assert schema["type"] == "function"
        fn = schema["function"]
        assert fn["name"] == tool.name and fn["description"]
        assert fn["parameters"]["type"] == "object"
        assert "title" not in str(fn["parameters"]) and "anyOf" not in str(fn["parameters"])
        assert tool.kind in ("read", "edit", "exec")
    read = tools[0].schema()["function"]["parameters"]
    assert read["required"] == ["path"]
    assert read["properties"]["offset"] == {
        "type": "integer",
        "minimum": 1,
        "description": "First line to show (1-based).",
    }
    assert tools[0].schema() == ReadTool().schema()  # stable: it sits in the cached prefix


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, "read: bad arguments: path: field required"),
        ({"path": 3}, "read: bad arguments: path: input should be a valid string"),
        ({"path": "a", "offset": 0}, "offset: input should be greater than or equal to 1"),
        ({"path": "a", "bogus": 1}, "bogus: extra inputs are not permitted"),
        ("{not json", "read: bad arguments: not valid JSON"),
        ([1, 2], "arguments must be a JSON object, got list"),
    ],
)
def test_bad_arguments_become_one_line_errors(raw, expected, tool_ctx: ToolContext):
    result = run_tool(ReadTool(), raw, tool_ctx)
    assert not result.ok and expected in result.content and "\n" not in result.content


def test_json_string_and_file_path_alias_are_accepted(tool_ctx: ToolContext):
    assert run_tool(ReadTool(), '{"path": "README.md"}', tool_ctx).ok
    assert run_tool(ReadTool(), {"file_path": "README.md"}, tool_ctx).ok


def test_exception_inside_a_tool_becomes_a_result(tool_ctx: ToolContext, caplog):
    result = run_tool(Boom(), {}, tool_ctx)
    assert not result.ok
    assert result.content == "boom failed: RuntimeError: no such thing"
    assert "tool boom failed" in caplog.text  # the cause is logged, not swallowed


def test_clip_text_keeps_head_and_tail(tmp_path: Path):
    text = "H" * 20_000 + "M" * 10_000 + "T" * 20_000
    clipped = clip_text(text, tmp_path / "x.log", limit=30_000)
    assert clipped.startswith("H" * 15_000) and clipped.endswith("T" * 15_000)
    assert "20,000 chars omitted" in clipped and str(tmp_path / "x.log") in clipped
    assert clip_text("short", "x") == "short"


def test_file_state_tracker(tool_ctx: ToolContext, git_repo: Path):
    path = git_repo / "README.md"
    files = tool_ctx.files
    assert "not been read" in files.stale_reason(path, path.read_bytes(), "README.md")
    files.record(path, path.read_bytes())
    assert files.stale_reason(path, path.read_bytes(), "README.md") is None
    assert files.get(path).size == len(path.read_bytes())
    path.write_text("# demo!\n")
    assert "changed on disk" in files.stale_reason(path, path.read_bytes(), "README.md")
    assert files.changed() == [path]
