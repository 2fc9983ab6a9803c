"""Helpers shared by the command modules: consoles and output modes."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from probekit.io import json_default

# Progress bars and tables go to stderr so that `--json` output on stdout stays parseable.
console = Console(stderr=True)


def emit_json(obj: Any) -> None:
    """Print one JSON document on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")


def rich_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    return table


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
