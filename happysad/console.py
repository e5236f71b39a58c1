"""What the commands print while they work: aligned tables, progress bars and one-line option errors.

Progress goes to standard error (tqdm: done, per second, time left), so a command that prints JSON on standard
output (`clean --json -`) stays parseable; short jobs show none.
"""
import argparse
import sys

from tqdm import tqdm


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose option errors are one line that ends with where the options are listed:
    argparse's own prints the whole usage first, twenty lines that bury the one that matters."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def table(rows: list, indent: str = "") -> str:
    """rows[0] is the header; every column is padded to its widest cell (numbers should come formatted)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in cells)


def progress(total: int, unit: str, shown_from: int) -> tqdm:
    """A progress bar over `total` units, shown only from `shown_from` of them: `.update(n)` as they finish,
    then `.close()` (or use it in a with block), which leaves the last state: how many, how long, how fast."""
    return tqdm(total=total, unit=unit, disable=total < shown_from, file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True)
