"""Progress output that suits where stderr goes.

On a terminal: a tqdm bar. Elsewhere (a log file, CI, `make demo > log`) tqdm would print a
full line per update, thousands of lines; there a plain line is written at most every
`interval` seconds, and once at the end.
"""
from __future__ import annotations

import sys
import time


class _PlainProgress:
    """The subset of tqdm's interface graphprune uses, as periodic plain lines."""

    def __init__(self, total: int | None, desc: str, unit: str, file, interval: float):
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit, file, interval
        self.n = 0
        self._postfix = ""
        self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self._postfix = s

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            total = f"/{self.total}" if self.total else ""
            post = f" ({self._postfix})" if self._postfix else ""
            print(f"{self.desc}: {self.n}{total} {self.unit}{post}", file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.refresh(force=True)


class _NoProgress:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def refresh(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, file=None,
                 interval: float = 10.0, leave: bool = True):
    """A tqdm bar on a terminal, periodic plain lines elsewhere, nothing when not `enabled`."""
    file = file or sys.stderr
    if not enabled:
        return _NoProgress()
    if getattr(file, "isatty", lambda: False)():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True, leave=leave)
    return _PlainProgress(total, desc, unit, file, interval)
