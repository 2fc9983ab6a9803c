"""Console output and shared options for the benchmark scripts (they are scripts, not the CLI: they draw with rich directly)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return t



def add_threads_option(ap) -> None:
    """--threads: torch threads for a benchmark (0 = torch's default)."""
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default); 1 avoids OpenMP spin-waits when the CPU is shared")


def apply_threads(n: int) -> int:
    """Set torch's thread count when `n` > 0; return the count in effect (recorded with the results)."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
