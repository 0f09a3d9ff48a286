"""What the benchmark shows while it runs, on stderr."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """One line on stderr, redrawn in place on a terminal; a line per run otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._width = 0

    def update(self, text: str) -> None:
        if self.live:
            self._width = max(self._width, len(text))
            self.stream.write("\r" + text.ljust(self._width))
            self.stream.flush()

    def done(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.live and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def bar(fraction: float, width: int = 12) -> str:
    """``[####........]``: ``fraction`` (clamped to 0..1) of ``width`` filled."""
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"
