"""The tables commands print and write: rich on a terminal, every value whole when piped (rich would cut each
column to fit 80 characters), and CSV files."""
import csv
import sys


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def console():
    """A rich console for stdout: the terminal's width, or unlimited off a terminal (a pipe, a file, a CI log)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000)


def as_table(rows: list[dict], title: str, left: tuple[str, ...] | None = None):
    """A rich table of `rows` (their keys are the columns): every column left-aligned, or, given `left`,
    those and the rest (numbers) right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="left" if left is None or column in left else "right",
                         no_wrap=not sys.stdout.isatty())  # piped: every value whole, however wide the table
    for row in rows:
        table.add_row(*(fmt(v) for v in row.values()))
    return table


def write_csv(rows: list[dict], f) -> None:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
