"""Generated sections of a markdown file: a script's output between its own two markers.

    <!-- benchmark.py: start -->
    ... what the script last wrote ...
    <!-- benchmark.py: end -->

A rerun replaces what lies between its markers and keeps the rest of the file, so figures
that a script measures are never retyped by hand.
"""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, text: str, writer: str) -> None:
    """Put `text` between `writer`'s markers (`writer` is a script's file name) in `path`,
    keeping the rest of the file (one blank line after the section); where the markers are
    missing, append the section (a new file holds it alone)."""
    start, end = f"<!-- {writer}: start -->", f"<!-- {writer}: end -->"
    section = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        section = head + section + ("\n" + after if after else "")
    elif old:
        section = old.rstrip() + "\n\n" + section
    path.write_text(section)
