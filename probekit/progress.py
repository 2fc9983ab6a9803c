"""Progress reporting without a user interface: the library calls, the CLI draws.

Long library functions take a `progress: Progress | None` argument and call
`progress.task(...)` for each long loop; the CLI passes an implementation that
draws rich progress bars in a terminal and prints plain periodic lines into a
log, tests and scripts pass nothing. The library itself never imports rich or
the CLI. A task's total is what the loop can know in advance (generate counts
samples, not tokens: a sample's length is known only when it ends); the note
carries what cannot be totalled (tokens decoded so far).
"""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    def advance(self, n: float = 1, note: str = "") -> None:
        """Record `n` more units of work done; `note` is a short status (e.g. the current loss)."""

    def close(self) -> None:
        """The loop is over (also called when it ends with an exception)."""


class Progress(Protocol):
    def task(self, description: str, total: float | None, unit: str = "") -> Task:
        """Start reporting one loop of `total` units (None: unknown)."""


class _NullTask:
    def advance(self, n: float = 1, note: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Reports nothing: the default when no progress is wanted."""

    def task(self, description: str, total: float | None, unit: str = "") -> Task:
        return _NullTask()


def or_null(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()
