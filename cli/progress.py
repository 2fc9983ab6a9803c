"""`probekit.progress.Progress` for the library's long loops: rich bars in a terminal, plain lines in a log.

Rich bars are transient and draw nothing when stderr is not a terminal, so a run sent to a log file (a cluster
job, `> log 2>&1`) showed nothing between the model's loading and the final table. When stderr is not a
terminal each loop instead prints a plain line about every PROBEKIT_PROGRESS_INTERVAL seconds (10 by default):
done/total, rate, time left and the loop's note, and a last line when it ends; a loop shorter than the
interval prints nothing, like a bar that vanishes. Rates below one unit a second read as seconds per unit
(`42.0 s/run`, where a sweep used to show `0 runs/s`).
"""

from __future__ import annotations

import os
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar

from probekit.errors import ProbekitError
from probekit_cli.common import console, esc

INTERVAL_ENV = "PROBEKIT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


def _singular(unit: str) -> str:
    """`runs` -> `run`, `batches` -> `batch`: the unit after `s/`."""
    if unit.endswith(("ches", "shes", "xes")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit


def fmt_rate(done: float, seconds: float, unit: str) -> str:
    """`831 tokens/s`, `2.5 runs/s`, or `42.0 s/run` below one unit a second; empty before anything is done."""
    if done <= 0 or seconds <= 0:
        return ""
    rate = done / seconds
    if rate >= 10:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 1:
        return f"{rate:.1f} {unit}/s"
    return f"{seconds / done:.1f} s/{_singular(unit)}"


def fmt_duration(seconds: float) -> str:
    """`0:07`, `12:30`, `2:05:00`."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def fmt_count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


class _RichTask:
    def __init__(self, description: str, total: float | None, unit: str):
        columns = [TextColumn(f"[bold]{esc(description)}"), BarColumn(), MofNCompleteColumn()]
        if unit:
            columns += [TextColumn(esc(unit)), TextColumn("{task.fields[rate]}", markup=False)]
        columns += [TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}", markup=False)]
        self._bar = RichBar(*columns, console=console, transient=True)
        self._task = self._bar.add_task(description, total=total, note="", rate="")
        self._unit = unit
        self._done = 0.0
        self._t0 = time.perf_counter()
        self._bar.start()

    def advance(self, n: float = 1, note: str = "") -> None:
        self._done += n
        rate = fmt_rate(self._done, time.perf_counter() - self._t0, self._unit) if self._unit else ""
        self._bar.update(self._task, advance=n, note=note, rate=rate)

    def close(self) -> None:
        self._bar.stop()


class RichProgress:
    """One transient rich bar per library loop, drawn on stderr (stdout stays clean for --json)."""

    def task(self, description: str, total: float | None, unit: str = "") -> _RichTask:
        return _RichTask(description, total, unit)


class _LineTask:
    def __init__(self, description: str, total: float | None, unit: str, interval: float):
        self._description, self._total, self._unit, self._interval = description, total, unit, interval
        self._done, self._note, self._printed = 0.0, "", False
        self._t0 = self._last = time.monotonic()

    def advance(self, n: float = 1, note: str = "") -> None:
        self._done += n
        self._note = note or self._note
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._print(self.line(now - self._t0))

    def line(self, elapsed: float, final: bool = False) -> str:
        """`generate: 12/64 samples (19%), 0.8 samples/s, 1:05 left; 3,456 tokens` (at the end: `... in 1:20`)."""
        unit = f" {self._unit}" if self._unit else ""
        done = fmt_count(self._done)
        if self._total:
            text = f"{done}/{fmt_count(self._total)}{unit} ({100 * self._done / self._total:.0f}%)"
        else:
            text = f"{done}{unit}"
        rate = fmt_rate(self._done, elapsed, self._unit or "units")
        if final:
            finished = self._total is None or self._done >= self._total
            parts = [f"{self._description}: {text} in {fmt_duration(elapsed)}" if finished else
                     f"{self._description}: stopped at {text} after {fmt_duration(elapsed)}", rate]
        else:
            left = (self._total - self._done) * elapsed / self._done if self._total and self._done else None
            parts = [f"{self._description}: {text}", rate, f"{fmt_duration(left)} left" if left is not None else ""]
        text = ", ".join(p for p in parts if p)
        return f"{text}; {self._note}" if self._note else text

    def _print(self, text: str) -> None:
        self._printed = True
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._printed:  # a loop that printed nothing stays silent at its end too
            self._print(self.line(time.monotonic() - self._t0, final=True))


class LineProgress:
    """Plain periodic lines on stderr for each library loop: what a log file (or a cluster's job output) can hold."""

    def __init__(self, interval: float = DEFAULT_INTERVAL):
        self.interval = interval

    def task(self, description: str, total: float | None, unit: str = "") -> _LineTask:
        return _LineTask(description, total, unit, self.interval)


def line_interval() -> float:
    """Seconds between two progress lines: $PROBEKIT_PROGRESS_INTERVAL, else 10 (0: a line at every step, for tests)."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ProbekitError(f"${INTERVAL_ENV}: must be a number of seconds >= 0, got {text!r}")
    return value


def progress_for(enabled: bool) -> RichProgress | LineProgress | None:
    """What a command passes to the library for its `--progress/--no-progress` option: bars in a terminal, else lines."""
    if not enabled:
        return None
    if console.is_terminal or console.is_jupyter:
        return RichProgress()
    return LineProgress(line_interval())
