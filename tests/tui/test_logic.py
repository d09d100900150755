"""The TUI's pure logic, without an app: diffs, history, turn queue, commands, formatting."""

from __future__ import annotations

from tui import commands
from tui.diff import DiffRow, parse_unified, side_by_side, stats
from tui.formatting import args_summary, duration, percent, tokens
from tui.history import PromptHistory
from tui.turn_queue import TurnQueue


def test_parse_unified_numbers_lines(canned):
    rows = parse_unified(canned["DIFF"])
    assert [r.kind for r in rows] == [
        "file",
        "file",
        "hunk",
        "context",
        "del",
        "add",
        "context",
        "context",
        "context",
    ]
    assert rows[4] == DiffRow("del", "    return a - b", old_no=2)
    assert rows[5] == DiffRow("add", "    return a + b", new_no=2)
    assert (rows[8].old_no, rows[8].new_no) == (5, 5)
    assert stats(rows) == (1, 1)


def test_removed_sql_comment_is_not_a_header():
    diff = "--- a/q.sql\n+++ b/q.sql\n@@ -1,2 +1,1 @@\n--- old comment\n select 1;\n"
    rows = parse_unified(diff)
    assert [r.kind for r in rows] == ["file", "file", "hunk", "del", "context"]
    assert rows[3].text == "-- old comment"


def test_side_by_side_pairs_changes_and_pads():
    diff = "@@ -1,3 +1,4 @@\n a\n-b\n-c\n+B\n+C\n+D\n"
    pairs = side_by_side(parse_unified(diff))
    sides = [(p.old.text if p.old else None, p.new.text if p.new else None) for p in pairs]
    assert sides == [("@@ -1,3 +1,4 @@",) * 2, ("a", "a"), ("b", "B"), ("c", "C"), (None, "D")]


def test_history_walks_back_and_restores_the_draft():
    history = PromptHistory()
    for text in ("one", "two", "two", "  "):
        history.add(text)
    assert history.entries == ["one", "two"]
    assert history.older("draft") == "two"
    assert history.older("two") == "one"
    assert history.older("one") is None
    assert history.newer() == "two"
    assert history.newer() == "draft"
    assert history.newer() is None


def test_turn_queue_matches_turns_to_prompts():
    turns = TurnQueue()
    first = turns.submit("first")
    assert not first.queued and turns.busy
    second, third = turns.submit("second"), turns.submit("third")
    assert second.queued and third.queued
    assert turns.started("first") == [first]
    turns.finished()
    assert turns.busy  # two still wait
    assert turns.started("second\n\nthird") == [second, third]  # folded into one turn
    turns.finished()
    assert not turns.busy


def test_turn_the_agent_started_itself_consumes_nothing():
    turns = TurnQueue()
    waiting = turns.submit("mine")
    assert turns.started("(continuing after a tool limit)") == []
    assert turns.pending == [waiting]


def test_commands_parse():
    assert commands.parse("fix the bug") is None
    assert commands.parse("/tmp/x fails, why?") is None  # a path, not a command
    assert commands.parse("?").command.name == "help"
    assert commands.parse("/exit").command.name == "quit"
    assert commands.parse("/sessions").command.name == "resume"
    invocation = commands.parse("/rewind 3")
    assert invocation.command.name == "rewind" and invocation.arg == "3"
    unknown = commands.parse("/nope")
    assert unknown.command is None and unknown.typed == "nope"


def test_formatting():
    assert [tokens(n) for n in (0, 999, 1234, 3_400_000)] == ["0", "999", "1.2K", "3.4M"]
    assert [duration(s) for s in (0, 61, 3725)] == ["0:00", "1:01", "1:02:05"]
    assert percent(1, 4) == "25%" and percent(1, 0) == ""
    assert args_summary("shell", {"command": "git status\ngit diff"}) == "git status…"
    assert args_summary("read", {"path": "calc.py"}) == "calc.py"
    assert args_summary("custom", {"n": 3, "s": "x"}) == "n=3, s='x'"
