"""Which tools each reply of a turn may call, and how tightly its arguments are held.

Modes: "auto" (the model decides), "required" (every reply calls a tool), "none" (words only),
"first" (one call, then an answer) and "chain", the default for models whose template has no
tools: small models not trained to call tools on their own are walked through a short plan
under the constrained grammar, one reply per step, up to the loop's step limit:

    explore (read, grep, glob) -> answer
    explore -> [run the tests] -> edit -> [run the tests; while they fail: undo, edit] -> answer
    delegate (a task call with the prompt, when it asks for a sub-agent) -> answer
    (after the last try fails it is undone too: the tree is never left worse than found)

An edit task is one whose prompt asks for a change ("fix", "rename", ...). Its edit is held to
what can succeed: the path is a file the turn has read, `old_string` one of that file's lines
(unique in it, indentation left out so the edit keeps it), `new_string` one new line: one
of the line's likely repairs (agent/line_mutations.py) while any is untried, else any line. When
the repository has pytest tests they run before and after each edit (a shell call, asked for
or refused like any other); the functions a failure points at, and the prompt's words, narrow
the lines offered; an edit that leaves them failing is undone (a call the grammar spells out)
and another line tried, never one tried before. A failed call is retried once; the same calls
twice in a row end in an answer; the loop's step limit bounds it all.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.failing_tests import is_test_file, read_run, test_command
from agent.line_mutations import repairs
from agent.repo_files import is_plain_name, read_inside
from agent.repo_order import definition_span, identifiers, task_files
from agent.tool_calls import ToolCall

MODES = ("auto", "required", "none", "first", "chain")
EXPLORE = ("read", "grep", "glob")
MAX_PATHS = 2000  # a read's path is one of the repository's files up to this many
MAX_EDIT_FILES = 3  # files an edit may target: the last ones read this turn
MAX_EDIT_LINES = 400  # lines offered as old_string per file
READ_LINES = 200  # a long file is read this many lines at a time (from a named definition)
BIG_FILE_BYTES = 16 * 1024  # past this a read shows READ_LINES, not the whole file
MAX_ARG_CHARS = 80  # a search pattern or a path, not a reply that runs to the token limit
RETRIES = 1  # a failed call is tried again this many times with the same tools
MAX_EDITS = 3  # edits per turn while the tests keep failing

_EDIT_WORDS = {
    "fix", "change", "edit", "update", "rename", "replace", "correct", "modify", "remove",
    "delete", "add", "implement", "refactor", "repair", "patch", "rewrite", "set", "make",
}
_QUESTION_WORDS = {"what", "why", "how", "where", "which", "who", "when", "explain", "describe",
                   "tell", "show", "list", "does", "is", "are", "summarize"}
_WORDS = re.compile(r"[a-z]+")
_CODE_ONLY = re.compile(r"\"[^\"]*\"|'[^']*'|#.*$")  # strings and comments
_POLITE = {"please", "can", "could", "would", "you", "kindly", "now", "just", "go", "and"}
_STOP = {"the", "this", "that", "with", "from", "into", "file", "code", "function", "wrong",
         "please", "should", "there", "which", "where", "what", "bug"} | _EDIT_WORDS
_PATH_LIKE = "^[^\\s\"<>|*?]*[./][^\\s\"<>|*?]*$"  # an extension or a folder: not `write`
_READ_FIRST = re.compile(r"^\W*(please\s+)?(read|open|look at)\b", re.IGNORECASE)
_DELEGATE = re.compile(r"\b(use|using|with|via|through)\s+(a\s+)?sub-?agents?\b",
                       re.IGNORECASE)
# "use a sub-agent to ...", "delegate: ...": what is left is the sub-agent's prompt
_ASKS_FOR_ONE = re.compile(r"^\W*(please\s+)?((use|start|ask|have|spawn|launch)\s+(a|one)?\s*"
                           r"sub-?agents?|delegate)\b\W*(to\s+|this\W*)?", re.IGNORECASE)


@dataclass(frozen=True)
class Choice:
    """What one reply may do: the GenParams tool_choice and, when narrowed, the schemas."""

    tool_choice: str
    schemas: list[dict[str, Any]] | None = None  # None: every tool, as the backend has them


def wants_edit(task: str) -> bool:
    """True when the prompt asks for a change rather than an answer: it leads with a change
    ("fix ...", "please rename ...", "can you add ..."), or names one and asks nothing."""
    words = [w for w in _WORDS.findall(task.lower()) if w not in _POLITE]
    if not words:
        return False
    if words[0] in _EDIT_WORDS:
        return True
    asks = "?" in task or bool(_QUESTION_WORDS & set(words))
    return not asks and bool(_EDIT_WORDS & set(words))


def delegated(task: str) -> str:
    """The work a prompt hands to a sub-agent ("use a sub-agent to read x" -> "Read x"), or
    "" when it asks for none."""
    asked = _ASKS_FOR_ONE.match(task)
    if asked is None:
        return task if _DELEGATE.search(task) else ""
    rest = task[asked.end():].strip()
    return rest[:1].upper() + rest[1:] if rest else task


@dataclass
class _Turn:
    edit: bool = False
    named: list[str] = field(default_factory=list)  # existing files the prompt names
    names: list[str] = field(default_factory=list)  # identifiers the prompt names
    reads: list[str] = field(default_factory=list)  # files read this turn, newest last
    last: str = ""  # the last call's tool name
    last_ok: bool = True
    last_choice: Choice | None = None
    retries: int = 0
    edits: int = 0
    words: set[str] = field(default_factory=set)  # the prompt's content words
    tests: str | None = None  # the command that runs the tests; None: none, or refused
    dirty: bool = True  # changed (or never tested) since the last test run
    passing: bool = False  # the last test run passed
    suspects: list[str] = field(default_factory=list)  # functions the failures point at
    applied: tuple[str, str, str] | None = None  # (path, old, new) of the edit under test
    undo: tuple[str, str, str] | None = None  # an edit the tests failed: to be undone
    tried: set[str] = field(default_factory=set)  # replacement lines that failed
    delegate: str = ""  # the prompt, when it asks for a sub-agent (and task is a tool)
    reads_named: bool = False  # the prompt says to read files it names


class ToolPolicy:
    """Picks each reply's Choice from the mode and what the turn has done so far."""

    def __init__(self, mode: str, schemas: list[dict[str, Any]], root: Path):
        if mode not in MODES:
            raise ValueError(f"unknown tool choice {mode!r}; one of {', '.join(MODES)}")
        self.mode = mode
        self.schemas = {s["function"]["name"]: s for s in schemas}
        self.root = root
        self._files: list[str] | None = None
        self.turn = _Turn()

    def start_turn(self, task: str) -> None:
        """A new user message: forget the last turn (and the file list: files come and go)."""
        if self.mode != "chain":
            self.turn = _Turn()
            return
        self._files = None
        files = self._repo_files()
        named = sorted(task_files(self.root, files, task)) if task else []
        edit = wants_edit(task)
        self.turn = _Turn(edit=edit, named=named, names=identifiers(task),
                          words={w for w in _WORDS.findall(task.lower())
                                 if len(w) >= 4 and w not in _STOP},
                          tests=test_command(files) if edit and "shell" in self.schemas else None,
                          delegate=delegated(task) if "task" in self.schemas else "",
                          reads_named=bool(named) and _READ_FIRST.match(task) is not None)

    def choose(self, step: int, repeating: bool) -> Choice:
        """The Choice for reply `step` of this turn (0-based)."""
        if step and repeating:
            return Choice("none")  # the same calls twice in a row: answer with what is known
        if self.mode == "first":
            return Choice("required" if step == 0 else "none")
        if self.mode != "chain":
            return Choice(self.mode)
        choice = self._chain(step)
        self.turn.last_choice = choice
        return choice

    def observe(self, call: ToolCall, ok: bool, content: str = "") -> None:
        """Note a call's outcome (the loop calls this after each tool ran or was refused)."""
        t = self.turn
        t.last, t.last_ok = call.name, ok
        args = call.arguments if isinstance(call.arguments, dict) else {}
        path = args.get("path")
        if ok and call.name == "read" and isinstance(path, str) and self._is_file(path):
            t.reads = [p for p in t.reads if p != path][-(MAX_EDIT_FILES - 1):] + [path]
        if ok and call.name in ("edit", "write"):
            self._edited(path, args.get("old_string"), args.get("new_string"))
        if call.name == "shell" and t.tests and args.get("command") == t.tests:
            self._tested(ok, content)

    def _edited(self, path: Any, old: Any, new: Any) -> None:
        t = self.turn
        edit = (path, old, new) if all(isinstance(x, str) for x in (path, old, new)) else None
        if edit is not None and t.undo is not None and edit == (t.undo[0], t.undo[2], t.undo[1]):
            t.tried.add(t.undo[2])  # undone: the tree is as the last test run saw it
            t.undo = None
            return
        t.edits += 1
        t.dirty = True
        t.applied, t.undo = edit, None

    def _tested(self, ok: bool, content: str) -> None:
        t = self.turn
        verdict = read_run(content, ok)
        if not ok and not verdict.suspects and "pytest" not in content:
            t.tests = None  # refused, or pytest is missing: go on without tests
            return
        t.dirty, t.passing = False, verdict.passed
        t.suspects = verdict.suspects or t.suspects
        t.undo = None if verdict.passed else t.applied
        t.applied = None

    # ---- the chain ----------------------------------------------------------------------

    def _chain(self, step: int) -> Choice:
        t = self.turn
        if t.delegate:  # the sub-agent explores (or edits) on its own; then answer
            return Choice("required", [self._task(t.delegate)]) if step == 0 else Choice("none")
        if step == 0:
            return self._explore()
        if (not t.last_ok and t.last != "shell" and t.retries < RETRIES
                and t.last_choice is not None):
            t.retries += 1
            return t.last_choice
        t.retries = 0
        if not t.edit:
            return Choice("none")
        if not t.reads and not t.edits:
            return self._find()
        if t.tests and t.dirty:
            return Choice("required", [self._run_tests()])
        if t.undo is not None and "edit" in self.schemas:  # the last try failed: put it back
            return Choice("required", [self._undo(*t.undo)])
        if t.edits and (t.passing or not t.tests or t.edits >= MAX_EDITS):
            return Choice("none")
        return self._edit()

    def _task(self, prompt: str) -> dict[str, Any]:
        """task, spelled out: the prompt as given, for a sub-agent to do."""
        return _with_params(self.schemas["task"], {
            "description": {"type": "string", "const": "delegated work"},
            "prompt": {"type": "string", "const": prompt}}, ["description", "prompt"])

    def _undo(self, path: str, old: str, new: str) -> dict[str, Any]:
        """The edit that puts back what a failed one replaced, spelled out whole."""
        return _with_params(self.schemas["edit"], {
            "path": {"const": path}, "old_string": {"const": new}, "new_string": {"const": old}},
            ["path", "old_string", "new_string"])

    def _find(self) -> Choice:
        """Nothing read yet: read a file to change, or create one."""
        schemas = [self._read()] if "read" in self.schemas else []
        schemas += [_required_only(self.schemas["write"])] if "write" in self.schemas else []
        return Choice("required", schemas) if schemas else Choice("none")

    def _run_tests(self) -> dict[str, Any]:
        command = {"type": "string", "const": self.turn.tests}
        return _with_params(self.schemas["shell"], {"command": command}, ["command"])

    def _explore(self) -> Choice:
        names = [n for n in EXPLORE if n in self.schemas]
        if self.turn.reads_named and "read" in names:  # "read x.py and ...": what was asked
            names = ["read"]
        schemas = [self._read() if name == "read" else _required_only(self.schemas[name], True)
                   for name in names]
        return Choice("required", schemas) if schemas else Choice("none")

    def _read(self) -> dict[str, Any]:
        """read, held to the files the prompt names (else any file); a long file or a named
        definition is read as a window of lines."""
        files = self.turn.named or self._repo_files()
        if len(files) > MAX_PATHS:
            return _with_params(self.schemas["read"], {"path": {"type": "string"}}, ["path"])
        options, whole = [], []
        for path in files:
            span = self._span(path)
            if span is None:
                whole.append(path)
            else:
                options.append(_object({"path": {"const": path}, "offset": {"const": span[0]},
                                        "limit": {"const": span[1]}}))
        if whole or not options:
            options.append(_object({"path": {"type": "string", "enum": whole or ["."]}}))
        schema = copy.deepcopy(self.schemas["read"])
        schema["function"]["parameters"] = options[0] if len(options) == 1 else {
            "anyOf": options}
        return schema

    def _span(self, path: str) -> tuple[int, int] | None:
        """(offset, limit) for a read of `path` that should not take it whole, else None."""
        try:
            big = os.lstat(self.root / path).st_size > BIG_FILE_BYTES
            if not big and not (self.turn.names and path in self.turn.named):
                return None
            lines = self._text(path, errors="replace").splitlines()
        except OSError:
            return None
        start, end = definition_span(lines, self.turn.names) if self.turn.names else (0, 0)
        if end > start:
            return max(1, start - 1), min(end - start + 3, READ_LINES)
        return (1, READ_LINES) if len(lines) > READ_LINES else None

    def _edit(self) -> Choice:
        from runtime.constraints import line_edit_parameters

        reads = [p for p in self.turn.reads if not is_test_file(p)] or self.turn.reads
        files = {p: edits for p in reads if (edits := self._line_edits(p))}
        if not files or "edit" not in self.schemas:
            return Choice("none")
        schema = copy.deepcopy(self.schemas["edit"])
        schema["function"]["parameters"] = line_edit_parameters(
            files, ("path", "old_string", "new_string"))
        return Choice("required", [schema])

    def _line_edits(self, path: str) -> list[Any]:
        """The lines of `path` an edit may replace (unique in the file; the indentation stays
        as it is), each by a line that is new to the file. Lines in the functions a failing
        test points at, and among them lines with the prompt's words, are offered alone."""
        from runtime.constraints import LineEdit

        try:
            text = self._text(path)
        except (OSError, UnicodeDecodeError):
            return []
        lines = text.splitlines()
        avoid = tuple(dict.fromkeys([*(c for line in lines if (c := line.strip())),
                                     *sorted(self.turn.tried)]))
        offered = [c for c in dict.fromkeys(line.strip() for line in self._focus(lines))
                   if len(c) >= 3 and text.count(c) == 1]
        return [LineEdit(core, "", avoid, tuple(repairs(core)))
                for core in offered][:MAX_EDIT_LINES]

    def _focus(self, lines: list[str]) -> list[str]:
        t = self.turn
        spans = [definition_span(lines, [name]) for name in t.suspects]
        inside = [line for a, b in spans if b - a < len(lines) for line in lines[a:b]]
        candidates = inside or lines
        worded = [line for line in candidates
                  if t.words & set(_WORDS.findall(_CODE_ONLY.sub(" ", line).lower()))]
        return worded or candidates

    def _text(self, path: str, errors: str = "strict") -> str:
        """A file's text, read without following links (the grammar must not carry what
        lies outside the repository); raises OSError or UnicodeDecodeError."""
        return read_inside(self.root, path, 8 * 1024 * 1024).decode("utf-8", errors)

    def _repo_files(self) -> list[str]:
        if self._files is None:
            from agent.repo_files import list_files

            self._files = [f for f in list_files(self.root) if is_plain_name(f)]
        return self._files

    def _is_file(self, path: str) -> bool:
        try:
            return (self.root / path).is_file()
        except (OSError, ValueError):
            return False


def path_like_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `path` argument held to names with an extension or a folder."""
    params = schema["function"].get("parameters", {})
    path = params.get("properties", {}).get("path")
    if path is None:
        return schema
    props = {**params["properties"], "path": {**path, "pattern": _PATH_LIKE}}
    return _with_params(schema, props, params.get("required", []))


def _with_params(schema: dict[str, Any], props: dict[str, Any], required: list[str]
                 ) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["function"]["parameters"] = _object(props, required)
    return out


def _object(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or list(props),
            "additionalProperties": False}


def _required_only(schema: dict[str, Any], bounded: bool = False) -> dict[str, Any]:
    """A function schema narrowed to its required parameters (write's path held to a path);
    `bounded`: its strings are short (search patterns, not prose)."""
    params = schema["function"].get("parameters", {})
    keep = params.get("required", [])
    props = {k: ({**v, "maxLength": MAX_ARG_CHARS} if bounded and v.get("type") == "string"
                 else v)
             for k, v in params.get("properties", {}).items() if k in keep}
    narrowed = _with_params(schema, props, keep)
    return path_like_schema(narrowed) if schema["function"]["name"] == "write" else narrowed
