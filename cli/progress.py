"""Rich progress bars implementing `probekit.progress.Progress` for the library's long loops."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar

from probekit_cli.common import console, esc


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
        rate = f"{self._done / max(time.perf_counter() - self._t0, 1e-9):,.0f} {self._unit}/s" if self._unit else ""
        self._bar.update(self._task, advance=n, note=note, rate=rate)

    def close(self) -> None:
        self._bar.stop()


class RichProgress:
    """One transient rich bar per library loop, drawn on stderr (stdout stays clean for --json)."""

    def task(self, description: str, total: float | None, unit: str = "") -> _RichTask:
        return _RichTask(description, total, unit)


def progress_for(enabled: bool) -> RichProgress | None:
    """What a command passes to the library for its `--progress/--no-progress` option."""
    return RichProgress() if enabled else None
