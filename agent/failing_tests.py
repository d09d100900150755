"""What a repository's tests say, for the tool policy of small models.

A model too small to read a traceback still benefits from one: the policy runs the tests (as
a shell call the permission rules see like any other), and the failures name the functions an
edit should look at. Only pytest is understood for now; other repositories get no test step.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import PurePosixPath

_TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")
_CALLED = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_IN_FUNCTION = re.compile(r"^\S+\.py:\d+: in (\w+)")
_PASSED = re.compile(r"\b\d+ passed\b")
_FAILED = re.compile(r"\b\d+ (failed|errors?)\b")
_NOT_SUSPECTS = {"assert", "print", "len", "str", "int", "float", "list", "dict", "set",
                 "tuple", "isinstance", "repr", "approx", "raises", "where"}


def test_command(files: list[str]) -> str | None:
    """The command that runs this repository's tests, or None when it has none we know."""
    if not any(_TEST_FILE.search(f) for f in files):
        return None
    runner = "pytest" if shutil.which("pytest") else "python3 -m pytest"
    return f"{runner} -q -x --tb=short -p no:cacheprovider"


@dataclass
class RunVerdict:
    """One run's verdict and the functions its failures point at (most likely first)."""

    passed: bool
    suspects: list[str] = field(default_factory=list)


def read_run(output: str, exit_ok: bool) -> RunVerdict:
    """Parse pytest's output: passed when it says so and nothing failed."""
    passed = exit_ok and bool(_PASSED.search(output)) and not _FAILED.search(output)
    return RunVerdict(passed, [] if passed else suspects(output))


def suspects(output: str) -> list[str]:
    """Functions named by the failing statements (`>` and `E` lines) and by the frames the
    failure went through, test functions left out."""
    found: list[str] = []
    for line in output.splitlines():
        names = []
        if line.startswith((">", "E ")):
            names = _CALLED.findall(line)
        elif m := _IN_FUNCTION.match(line):
            names = [m.group(1)]
        for name in names:
            if name not in found and name not in _NOT_SUSPECTS and not name.startswith("test"):
                found.append(name)
    return found


def is_test_file(path: str) -> bool:
    """A pytest test module (the policy edits code, not the tests that check it)."""
    return bool(_TEST_FILE.search(PurePosixPath(path).as_posix()))
