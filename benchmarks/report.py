"""Console output for the benchmark scripts (they are scripts, not the CLI: they draw with rich directly)."""

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

