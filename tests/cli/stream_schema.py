"""Checks a stream-json run against docs/events.schema.json and the stream's promises."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "events.schema.json")
                    .read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def validate_lines(lines: list[dict]) -> list[dict]:
    """Every line valid; `init` first after any download progress; one session_id on every
    later line; `result` last and only there."""
    for line in lines:
        errors = sorted(VALIDATOR.iter_errors(line), key=lambda e: e.path)
        assert not errors, (line, [e.message for e in errors][:3])
    before = [i for i, line in enumerate(lines) if line["type"] == "init"]
    if not before:  # the session could not open: a fatal error says why, then the result
        assert [e["type"] for e in lines if e["type"] != "progress"] == ["error", "result"]
        return lines
    head = lines[:before[0]]
    assert all(e["type"] == "progress" and e["kind"] == "download" for e in head), head
    sid = lines[before[0]]["session_id"]
    assert all(e["session_id"] == sid for e in lines[before[0]:]), "session_id changed"
    assert lines[-1]["type"] == "result"
    assert [e["type"] for e in lines].count("result") == 1
    return lines


def validate_stream(stdout: str) -> list[dict]:
    """`validate_lines` over a stream's text (every line must be JSON)."""
    return validate_lines([json.loads(line) for line in stdout.splitlines() if line.strip()])
