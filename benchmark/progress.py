"""Plain progress lines for work that takes more than a few seconds (training epochs and steps, a teacher's
training, a table's runs): readable on a terminal and in a log file alike, at most one line every few seconds,
each with elapsed time and an ETA. `--quiet` (environment XKD_QUIET=1, inherited by a table's workers) turns
them off; results, warnings and errors are printed as before."""

from __future__ import annotations

import os
import sys
import time


def quiet() -> bool:
    return os.environ.get("XKD_QUIET", "") not in ("", "0")


def duration(s: float) -> str:
    """12s, 4.5 min, 2.1 h."""
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f}s"


class Progress:
    """progress.update(done, detail) prints `<what>: <unit> done/total <detail> [elapsed, ETA]` when `every`
    seconds have passed since its last line (or since it began, with first=False), and for the first unit done
    (the first sign of life). `start`: units done before (a resumed run), not counted in the ETA's rate."""

    def __init__(self, what: str, total: int, unit: str, every: float = 10.0, start: int = 0, first: bool = True):
        self.what, self.total, self.unit, self.every, self.start = what, total, unit, every, start
        self.t0 = time.perf_counter()
        self.last: float | None = None if first else self.t0

    def update(self, done: int, detail: str = "", force: bool = False) -> None:
        if quiet():
            return
        now = time.perf_counter()
        if not force and self.last is not None and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = elapsed / max(done - self.start, 1)
        left = self.total - done
        eta = f", ETA {duration(rate * left)}" if left > 0 and done > self.start else ""
        print(
            f"{self.what}: {self.unit} {done}/{self.total}{' ' + detail if detail else ''} [elapsed {duration(elapsed)}{eta}]",
            file=sys.stdout,
            flush=True,
        )


def table_line(done: int, total: int, t0: float) -> str:
    """A table's progress after a run ends: `[3/8 done, 5 left, elapsed 6.2 min, ETA 10.3 min]` (t0: time.time())."""
    elapsed, left = time.time() - t0, total - done
    return (
        f"[{done}/{total} done, {left} left, elapsed {duration(elapsed)}"
        + (f", ETA {duration(elapsed / done * left)}" if left and done else "")
        + "]"
    )
