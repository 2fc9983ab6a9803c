"""Lay a `Summary` out for the console so that nothing is cut: a table, the same table split in parts, or blocks.

Rich shrinks a table that is wider than the terminal by cutting cells (`baseli…`, `0.539…`), so two different
rows could read the same. Here every column gets a width computed beforehand: a label or a number column is as
wide as its longest cell, only free-text columns (`Summary.wrap`) and headers wrap. If the table does not fit the
console's width it is split into parts that repeat the label column (when each part still holds a couple of
columns), else it is printed one record per block: the label on its own line, then `column: value` lines.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from probekit_cli.summary import Summary

MIN_WRAP = 12  # the narrowest a free-text column gets before the table is split instead
SHORT = 20  # a cell up to this wide (a number, an interval, a name) is never broken, even in a free-text column


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


def _table_width(widths: list[int]) -> int:
    """Width of a rich table with the default box and padding: each column + 2 spaces, plus n + 1 rules."""
    return sum(widths) + 3 * len(widths) + 1


def column_widths(summary: Summary, cells: list[list[str]], width: int) -> list[int] | None:
    """Each column's width so that the whole table fits `width`, or None when it cannot without cutting a cell.

    Label and number columns take their longest cell (and at least their header's longest word); free-text
    columns take their longest line if there is room, else share what is left, down to MIN_WRAP or their
    longest short cell (SHORT). Headers wrap when wider than their column.
    """
    natural, least = [], []
    for j, name in enumerate(summary.columns):
        column = [row[j] for row in cells]
        longest = max((cell_len(c) for c in column), default=0)
        if name in summary.wrap:
            natural.append(max(longest, cell_len(name)))
            short = max((cell_len(c) for c in column if cell_len(c) <= SHORT), default=0)
            least.append(min(natural[-1], max(MIN_WRAP, short, _longest_word(name))))  # longer words fold
        else:
            natural.append(max(longest, cell_len(name)))
            least.append(max(longest, _longest_word(name)))
    if _table_width(natural) <= width:
        return natural
    if _table_width(least) > width:
        return None
    # Headers of fixed columns wrap; the free-text columns share the room that is left, in proportion to their text.
    widths = list(least)
    spare = width - _table_width(widths)
    free = [j for j, name in enumerate(summary.columns) if name in summary.wrap]
    want = sum(natural[j] - least[j] for j in free)
    for j in free:
        widths[j] += min(natural[j] - least[j], spare * (natural[j] - least[j]) // want) if want else 0
    return widths


def _rich_table(summary: Summary, cells: list[list[str]], columns: list[int], widths: list[int], title: str) -> Table:
    table = Table(title=Text(title), title_justify="left")
    for j, w in zip(columns, widths):
        table.add_column(Text(summary.columns[j]), width=w, overflow="fold")
    for i, row in enumerate(cells):
        if any(row[j] for j in columns[1:]) or len(columns) == len(row):  # a part leaves out rows it has nothing for
            table.add_row(*(Text(row[j]) for j in columns), style="dim" if i in summary.dim else None)
    return table


def split_columns(summary: Summary, cells: list[list[str]], width: int) -> list[tuple[list[int], list[int]]] | None:
    """The value columns packed in order into parts that each fit `width` beside the label column: [(columns, widths)].

    None when one value column alone does not fit beside the labels, or when the parts would hold fewer than two
    columns each on average (blocks read better then).
    """
    parts: list[list[int]] = []
    current: list[int] = []
    for j in range(1, len(summary.columns)):
        if _fits(summary, cells, [0, j], width) is None:  # this column alone does not fit beside the labels
            return None
        if current and _fits(summary, cells, [0, *current, j], width) is None:
            parts.append([0, *current])
            current = []
        current.append(j)
    if current:
        parts.append([0, *current])
    if len(summary.columns) - 1 < 2 * len(parts):
        return None
    return [(columns, _fits(summary, cells, columns, width)) for columns in parts]


def _fits(summary: Summary, cells: list[list[str]], columns: list[int], width: int) -> list[int] | None:
    sub = Summary(summary.title, [summary.columns[j] for j in columns], [], wrap=summary.wrap)
    return column_widths(sub, [[row[j] for j in columns] for row in cells], width)


def print_blocks(console: Console, summary: Summary, cells: list[list[str]]) -> None:
    """One record per block: the label in bold on its own line, then `column: value` for every filled cell
    (the value on the next line when both do not fit)."""
    console.print(Text(summary.title, style="bold"))
    for i, row in enumerate(cells):
        console.print()
        console.print(Text(row[0], style="bold dim" if i in summary.dim else "bold"))
        style = "dim" if i in summary.dim else ""
        for name, value in zip(summary.columns[1:], row[1:]):
            if value in ("", "-"):
                continue
            if cell_len(f"  {name}: {value}") <= console.width:
                console.print(Text(f"  {name}: {value}", style=style))
            else:  # the value on a line of its own, so that a number is not broken after its name
                console.print(Text(f"  {name}:", style=style))
                console.print(Text(f"    {value}", style=style))


def print_summary(console: Console, summary: Summary) -> None:
    """Print `summary` at the console's width: whole, in parts, or one record per block; then its legend."""
    cells = summary.cells()
    width = console.width
    widths = column_widths(summary, cells, width)
    if widths is not None:
        console.print(_rich_table(summary, cells, list(range(len(summary.columns))), widths, summary.title))
    elif (parts := split_columns(summary, cells, width)) is not None:
        for k, (columns, part_widths) in enumerate(parts, 1):
            console.print(_rich_table(summary, cells, columns, part_widths, f"{summary.title} (part 1 of {len(parts)})" if k == 1 else f"part {k} of {len(parts)}"))
    else:
        print_blocks(console, summary, cells)
    if summary.legend:
        console.print(Text(summary.legend, style="dim"))
