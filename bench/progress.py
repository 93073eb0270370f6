"""A dependency-free text progress bar on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[#####-----]  12/40  1m05s  <what is running now>`` on one line.

    On a terminal the line is redrawn in place (carriage return); in a log file
    each update is its own line, so the log stays readable. ``enabled=False``
    silences it (tests).
    """

    WIDTH = 24

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_len = 0

    def status(self, text: str) -> None:
        """Show what is running now without advancing."""
        if not self.enabled:
            return
        filled = round(self.WIDTH * self.done / self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        elapsed = int(time.perf_counter() - self.start)
        line = f"[{bar}] {self.done:>3}/{self.total}  {elapsed // 60}m{elapsed % 60:02d}s  {text}"
        if self.tty:
            pad = " " * max(0, self._last_len - len(line))
            self.stream.write("\r" + line + pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self, text: str = "") -> None:
        """Mark one step done."""
        self.done = min(self.done + 1, self.total)
        self.status(text)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
