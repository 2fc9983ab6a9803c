"""A command's summary as data, and the one way every command prints it: `--json`, or `--format table|markdown|csv`.

A command builds `Summary` objects (a title, column names, rows whose first cell labels the row) and hands them to
`Report.show`. The terminal table is laid out by `probekit_cli.layout` so that it fits the console; markdown and
csv go to stdout (like `--json`), for a report or a spreadsheet, while messages stay on stderr. Every cell goes
through `fmt_value`, so no Python repr (`None`, `[0]`, `['bfloat16']`, `9.1250`) reaches the screen.
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Mapping

import typer
from rich.text import Text

from probekit.errors import ProbekitError
from probekit_cli.common import console, emit_json


class TableFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"


FORMAT_HELP = ("How the summary is printed: table (on stderr, laid out to fit the terminal), markdown or csv (on stdout, "
               "for a report or a spreadsheet; messages stay on stderr). --json prints the full record instead.")


def json_option(help_text: str) -> Any:
    """The `--json` option of a command (its help says what the JSON holds)."""
    return typer.Option(False, "--json", help=help_text)


def format_option() -> Any:
    """The `--format` option, the same for every command with a summary."""
    return typer.Option(TableFormat.table, "--format", help=FORMAT_HELP, case_sensitive=False)


def fmt_num(x: float) -> str:
    """A number as a person reads it: integral values as integers, 3 significant digits, 3 decimals below 1.

    `tokens_per_second 831.1` -> `831`, `9.125` -> `9.13`, `-0.4573` -> `-0.457`, `1.0` -> `1`.
    """
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() or abs(x) >= 100:
        return str(int(round(x)))
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.3f}" if abs(x) >= 0.001 else f"{x:.1e}"


def fmt_value(value: Any) -> str:
    """Any summary value as screen text: `-` for None, yes/no, lists joined by commas, numbers by `fmt_num`."""
    if value is None:
        return "-"
    if isinstance(value, Text):
        return value.plain
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return fmt_num(value)
    if isinstance(value, (list, tuple, set)):
        return ", ".join(fmt_value(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt_value(v)}" for k, v in value.items()) if value else "-"
    return str(value)


def fmt_field(key: str, value: Any) -> str:
    """A field of a field/value summary: durations (`...seconds`) to a tenth of a second, the rest by `fmt_value`."""
    if key.endswith("seconds") and isinstance(value, float):
        return f"{value:.1f}"
    return fmt_value(value)


@dataclass
class Summary:
    """One table of a command's summary: `columns[0]` names the labels, the first cell of each row.

    `wrap` names the columns of free text (notes, paths) that may wrap over lines; every other cell is printed
    whole on one line. `dim` holds the indices of rows drawn dim (the trivial baselines beside a probe).
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    wrap: tuple[str, ...] = ()
    legend: str = ""
    dim: set[int] = field(default_factory=set)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def cells(self) -> list[list[str]]:
        """The rows as the text printed in every format."""
        return [[fmt_value(v) for v in row] for row in self.rows]

    def labels(self) -> list[str]:
        return [row[0] for row in self.cells()]


def legend(labels: Iterable[str], meanings: Mapping[str, str], lead: str = "") -> str:
    """The one-line legend under a table: what each shown label's number is (units, scale, direction).

    Only labels the table shows are explained, in the table's order, as `label: meaning`; `lead` (a sentence
    about the whole table) comes first. Every command takes its words from one mapping (`probekit_cli.legends`),
    so a field means the same under every table, and the README's "What a command prints" quotes the same words.
    """
    parts = [f"{label}: {meanings[label]}" for label in dict.fromkeys(labels) if label in meanings]
    return " ".join(p for p in (lead, "; ".join(parts) + ("." if parts else "")) if p)


def fields_summary(title: str, values: dict[str, Any], meanings: Mapping[str, str] | None = None, lead: str = "") -> Summary:
    """A two-column field/value summary (fit, generate, extract, ...); long values wrap, fields never do.

    With `meanings`, the legend says what each shown field is (`legend`)."""
    return Summary(title, ["field", "value"], [[k, fmt_field(k, v)] for k, v in values.items()], wrap=("value",),
                   legend=legend(values, meanings or {}, lead))


def markdown(summary: Summary) -> str:
    """A pipe table under its title in bold (and its legend in italics)."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [f"**{summary.title}**", "", row(summary.columns), "|" + "|".join("---" for _ in summary.columns) + "|"]
    lines += [row(cells) for cells in summary.cells()]
    if summary.legend:
        lines += ["", f"_{summary.legend}_"]
    return "\n".join(lines) + "\n"


def write_csv(summary: Summary, out: Any) -> None:
    """The table as CSV after a `# title` comment line (and a `# legend` one): pandas reads it with comment='#'."""
    out.write(f"# {summary.title}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(summary.columns)
    writer.writerows(summary.cells())
    if summary.legend:
        out.write(f"# {summary.legend}\n")


@dataclass
class Report:
    """What a command's `--json` and `--format` options ask for; `show` prints its summaries that way."""

    json: bool = False
    format: TableFormat | str = TableFormat.table

    def __post_init__(self) -> None:
        try:
            self.format = TableFormat(self.format)
        except ValueError:
            raise ProbekitError(f"--format: one of {', '.join(f.value for f in TableFormat)}, got {self.format!r}") from None
        if self.json and self.format is not TableFormat.table:
            raise ProbekitError(f"--json and --format {self.format.value} both print on stdout: give one of them")

    @property
    def text(self) -> bool:
        """True when the summary is for a person at the terminal (the default table)."""
        return self.format is TableFormat.table and not self.json

    def emit(self, obj: Any) -> None:
        emit_json(obj)

    def show(self, *summaries: Summary) -> None:
        """Print the summaries: laid out for the console, or as markdown / csv on stdout (blank line between tables)."""
        from probekit_cli.layout import print_summary

        for i, summary in enumerate(summaries):
            if self.format is TableFormat.table:
                print_summary(console, summary)
                continue
            if i:
                sys.stdout.write("\n")
            if self.format is TableFormat.markdown:
                sys.stdout.write(markdown(summary))
            else:
                write_csv(summary, sys.stdout)
        sys.stdout.flush()
