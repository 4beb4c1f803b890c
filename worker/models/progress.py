"""Progress display for the model downloader: a bar on a terminal, a line per 10 % in logs."""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Progress", "human"]


def human(n: float) -> str:
    """``n`` bytes (or bytes/s) in decimal units: ``"1.5 MB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """A one-line progress bar on a terminal; a line per 10 % otherwise (logs, CI)."""

    def __init__(self, label: str, total: int | None, done: int, out: TextIO) -> None:
        self.label, self.total, self.done, self.out = label, total, done, out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.first = done
        self.last_draw = 0.0
        self.last_decile = -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last_draw >= 0.1:
            self.last_draw = now
            self._draw(end="\r")
        elif not self.tty and self.total:
            decile = min(10, self.done * 10 // self.total)
            if decile != self.last_decile:
                self.last_decile = decile
                self._draw(end="\n")

    def _draw(self, end: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = human((self.done - self.first) / elapsed) + "/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            line = (
                f"  {self.label} [{bar:<30}] {frac * 100:5.1f}% "
                f"{human(self.done)}/{human(self.total)} {rate}"
            )
        else:
            line = f"  {self.label} {human(self.done)} {rate}"
        self.out.write(line + end)
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self._draw(end="\n")
