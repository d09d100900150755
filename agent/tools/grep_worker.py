"""The grep tool's worker process: searches files with Python's `re` and prints the hits.

Run as a script (standard library only, so it starts in milliseconds). It reads one JSON request
on stdin, {"pattern", "ignore_case", "paths", "room", "max_file_bytes"}, and writes one JSON
array per matching line, [path index, line number, line text], until `room` lines are found. A
regex that backtracks forever holds only this process: the tool kills it at its timeout.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys


def search(request: dict) -> None:
    """Write the hits of `request` to stdout (see the module docstring)."""
    rx = re.compile(request["pattern"], re.IGNORECASE if request["ignore_case"] else 0)
    room, limit = request["room"], request["max_file_bytes"]
    out = sys.stdout
    for index, path in enumerate(request["paths"]):
        for number, line in _lines(path, limit):
            if rx.search(line):
                out.write(json.dumps([index, number, line]) + "\n")
                room -= 1
                if room <= 0:
                    return
        out.flush()


def _lines(path: str, limit: int) -> list[tuple[int, str]]:
    """Numbered lines of a text file; nothing for links, binary, huge or unreadable files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return []
        data = f.read(limit + 1)
    if b"\0" in data[:8192]:
        return []
    text = data.decode("utf-8", errors="replace")
    return [(n, line.removesuffix("\r")) for n, line in enumerate(text.split("\n"), start=1)]


if __name__ == "__main__":
    search(json.loads(sys.stdin.read()))
