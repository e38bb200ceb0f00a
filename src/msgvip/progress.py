"""Progress for a terminal and for a log: a tqdm bar where stderr is a terminal; on a pipe or a
file, one plain line every LOG_EVERY_FRACTION of the work or LOG_EVERY_SECONDS, with the rate and
the time left (a redrawn bar wrote 160 KB of carriage returns into a demo's log)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

LOG_EVERY_FRACTION = 0.1
LOG_EVERY_SECONDS = 30.0


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str, enabled: bool = True, initial: int = 0,
                 leave: bool = True) -> Any:  # fmt: skip
    """A tqdm bar on a terminal, :class:`LineProgress` otherwise; nothing shown unless ``enabled``."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, initial=initial)


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` / iteration, written as whole lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None, desc: str, unit: str, enabled: bool = True, initial: int = 0):
        self.iterable, self.total, self.desc, self.unit, self.enabled = iterable, total, desc, unit, enabled
        self.n = self.start_n = initial
        self.postfix = ""
        self.started = self.last_time = time.monotonic()
        self.last_n = initial
        self.closed = False
        if enabled and total:  # the first line at once, not a tenth of the work later
            print(f"{desc}: {initial}/{total} {unit}s", file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = max(1, int((self.total or 0) * LOG_EVERY_FRACTION))
        if (self.total and self.n - self.last_n >= step) or now - self.last_time >= LOG_EVERY_SECONDS:
            self._line(now)

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._line(time.monotonic())
        self.closed = True

    def _line(self, now: float) -> None:
        self.last_time, self.last_n = now, self.n
        if not self.enabled:
            return
        rate = (self.n - self.start_n) / max(now - self.started, 1e-9)
        done = f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n} {self.unit}s"
        left = f", {_duration((self.total - self.n) / rate)} left" if self.total and rate > 0 and self.n < self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done}, {rate:.1f} {self.unit}/s{left}{extra}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
